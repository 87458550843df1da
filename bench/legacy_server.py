"""agentlightning 0.3.0's legacy `AgentLightningServer`, with tasks queued, for the benchmarks.

Runs under a Python that has agentlightning==0.3.0 installed (the compat venv that
`tests/compat_env.py` builds). The server has no HTTP route for queueing, so this script
queues `--tasks` tasks in-process (the same tasks the bench queues on agl), and only then
prints `legacy ready: ... listening on http://127.0.0.1:PORT` on stdout.

The server logs every request through uvicorn's access log at its hard-wired level
"info"; that is turned off here (the `uvicorn.access` logger disabled, and the access log
switched off in its uvicorn config), and agentlightning's own per-task info messages are
silenced, as agl runs with `--log-level warning`: no server pays for logging.

With `--control` it reads commands on stdin: `queue N` queues N more tasks and answers
`legacy queued N, T in all` on stdout; the end of stdin stops the server, so that it never
outlives the bench that started it. It also stops on SIGINT or SIGTERM.

How to run
    .agl-test/compat-venv/bin/python bench/legacy_server.py --tasks 1000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import HOST, task_spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=0, help="tasks to queue before announcing readiness")
    parser.add_argument("--task-timeout", type=float, default=3600.0, help="seconds before a claim expires")
    parser.add_argument(
        "--control", action="store_true", help="obey `queue N` lines on stdin; stop when it closes"
    )
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    warnings.simplefilter("ignore")
    from agentlightning.server import AgentLightningServer  # type: ignore[import-not-found]

    server: Any = AgentLightningServer(HOST, 0, task_timeout_seconds=args.task_timeout)
    logging.getLogger("uvicorn.access").disabled = True
    server._uvicorn_config.access_log = False
    logging.getLogger("agentlightning").setLevel(logging.WARNING)
    await server.start()
    if not server._uvicorn_server.started:
        raise SystemExit("the 0.3.0 server did not start")
    port = server._uvicorn_server.servers[0].sockets[0].getsockname()[1]

    queued = 0

    async def queue(count: int) -> None:
        nonlocal queued
        for i in range(queued, queued + count):
            spec = task_spec(i)
            await server.queue_task(spec["input"], mode=spec["mode"], metadata=spec["metadata"])
        queued += count

    began = time.perf_counter()
    await queue(args.tasks)
    queued_in = time.perf_counter() - began
    print(
        f"legacy ready: {args.tasks} tasks queued in {queued_in:.1f} s; listening on http://{HOST}:{port}",
        flush=True,
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.control:

        def obey_stdin() -> None:
            for line in sys.stdin:
                words = line.split()
                if len(words) != 2 or words[0] != "queue" or not words[1].isdigit():
                    print(f"legacy: not a command: {line.strip()!r}", file=sys.stderr, flush=True)
                    continue
                asyncio.run_coroutine_threadsafe(queue(int(words[1])), loop).result()
                print(f"legacy queued {words[1]}, {queued} in all", flush=True)
            loop.call_soon_threadsafe(stop.set)  # end of stdin: whoever started us is gone or done

        threading.Thread(target=obey_stdin, daemon=True).start()
    await stop.wait()
    await server.stop()


def main() -> None:
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
