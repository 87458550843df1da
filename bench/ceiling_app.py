"""The ceiling: the legacy worker routes answered with canned JSON by a bare Starlette app.

No store, no validation, no bookkeeping: what is left is the cost of the framework and the
server that agl is built on, so no server on this stack can be much faster. It runs on
uvicorn as agl does: the same defaults (uvloop and httptools when installed), no access
log, log level "warning", a listening socket with TCP_NODELAY set, as agl's.

Routes (what a 0.3.0 worker calls):
    GET  /task              a fixed, realistic task under a fresh `rollout-<uuid>` id
    POST /rollout           reads the JSON body and acknowledges its rollout id
    GET  /resources/latest  a fixed resources update (one LLM endpoint)

How to run (it prints `listening on http://127.0.0.1:PORT` on stderr)
    python bench/ceiling_app.py            # an ephemeral port
    python bench/ceiling_app.py --port 8123
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import uuid
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import HOST, task_spec

_TASK = task_spec(4242)
_RESOURCES = {
    "resources_id": "res-bench",
    "create_time": 1_750_000_000.0,
    "update_time": 1_750_000_000.0,
    "version": 1,
    "resources": {
        "main_llm": {
            "resource_type": "llm",
            "endpoint": "http://127.0.0.1:9999/v1",
            "model": "Qwen/Qwen2.5-1.5B-Instruct",
            "api_key": None,
            "sampling_parameters": {"temperature": 0.7, "top_p": 0.95},
        }
    },
}


async def next_task(request: Request) -> JSONResponse:
    now = time.time()
    task = {
        "rollout_id": f"rollout-{uuid.uuid4()}",
        "input": _TASK["input"],
        "mode": _TASK["mode"],
        "resources_id": None,
        "create_time": now,
        "last_claim_time": now,
        "num_claims": 1,
        "metadata": _TASK["metadata"],
    }
    return JSONResponse({"is_available": True, "task": task})


async def post_rollout(request: Request) -> JSONResponse:
    rollout = await request.json()
    message = f"Rollout {rollout['rollout_id']} received and stored."
    return JSONResponse({"status": "ok", "message": message, "data": None})


async def latest_resources(request: Request) -> JSONResponse:
    return JSONResponse(_RESOURCES)


app = Starlette(
    routes=[
        Route("/task", next_task, methods=["GET"]),
        Route("/rollout", post_rollout, methods=["POST"]),
        Route("/resources/latest", latest_resources, methods=["GET"]),
    ]
)


def listening_socket(port: int) -> socket.socket:
    """Bound and listening as agl's daemon does it, so that both serve the same way."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((HOST, port))
    sock.listen(2048)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port")
    args = parser.parse_args()
    sock = listening_socket(args.port)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    print(f"ceiling listening on http://{HOST}:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
