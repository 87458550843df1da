"""The real, unmodified agentlightning 0.3.0 workers against agl, in their own environment.

The environment is built once (about a minute) and reused; see tests/compat_env.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from compat_env import REPO_ROOT, WORKERS_DIR, compat_env, run_json
from daemon import Daemon

pytestmark = pytest.mark.timeout(900)

LLM = {"resource_type": "llm", "endpoint": "http://127.0.0.1:9/v1", "model": "tiny", "api_key": "sk-secret"}
PROMPT = {"resource_type": "prompt_template", "template": "What is {x}?", "engine": "f-string"}


def test_the_0_3_0_client_fetches_resources_claims_and_reports(
    compat_python: Path, make_daemon: Callable[..., Daemon]
) -> None:
    """Its sync methods against one daemon, its async ones against another."""
    daemons = {flavour: make_daemon() for flavour in ("sync", "async")}
    published = {
        flavour: daemon.publish({"main_llm": LLM, "prompt": PROMPT}) for flavour, daemon in daemons.items()
    }
    queued = {
        flavour: daemon.queue({"x": 3}, mode="train", resources_id=published[flavour]["resources_id"])[0]
        for flavour, daemon in daemons.items()
    }
    seen = run_json(
        compat_python,
        str(WORKERS_DIR / "client_calls.py"),
        "--sync",
        daemons["sync"].url,
        "--async",
        daemons["async"].url,
    )
    assert set(seen) == {"sync", "async"}
    for flavour, daemon in daemons.items():
        client_saw(seen[flavour], daemon, published[flavour], queued[flavour])


def client_saw(seen: dict[str, Any], daemon: Daemon, published: dict[str, Any], rollout_id: str) -> None:
    assert seen["latest"]["resources_id"] == published["resources_id"]
    assert seen["latest"]["resource_classes"] == {"main_llm": "LLM", "prompt": "PromptTemplate"}
    assert seen["latest"]["resources"]["main_llm"]["api_key"] == "sk-secret"  # workers get the real key
    assert seen["by_id"]["resources_id"] == published["resources_id"]
    assert seen["missing"] is None
    task = seen["task"]
    assert (task["rollout_id"], task["input"], task["mode"], task["num_claims"]) == (
        rollout_id,
        {"x": 3},
        "train",
        1,
    )
    assert seen["post_response"] == {
        "status": "ok",
        "message": f"Rollout {rollout_id} received and stored.",
        "data": None,
    }
    [stored] = daemon.rollouts()
    posted = seen["posted_rollout"]
    assert {k: stored[k] for k in posted} == posted
    assert daemon.status()["tasks"]["completed"] == 1


def test_fit_v0_with_two_workers_completes_every_task_once(
    compat_python: Path, make_daemon: Callable[..., Daemon]
) -> None:
    """A sync agent's run against one daemon, then an async agent's against another."""
    daemons = {flavour: make_daemon("--task-timeout", "60") for flavour in ("sync", "async")}
    per_worker, workers = 3, 2  # fit_v0's max_tasks counts per worker
    queued = {}
    for flavour, daemon in daemons.items():
        daemon.publish({"main_llm": LLM, "prompt": PROMPT})
        queued[flavour] = daemon.queue(*({"x": k} for k in range(per_worker * workers)), mode="train")
    summary = run_json(
        compat_python,
        str(WORKERS_DIR / "fit_v0_run.py"),
        "--sync",
        daemons["sync"].url,
        "--async",
        daemons["async"].url,
        "--max-tasks",
        str(per_worker),
        "--workers",
        str(workers),
        "--poll-interval",
        "0.1",
    )

    assert set(summary) == {"sync", "async"}
    for flavour, daemon in daemons.items():
        assert summary[flavour]["ok"] is True
        rollouts, ids = daemon.rollouts(), queued[flavour]
        assert sorted(r["rollout_id"] for r in rollouts) == sorted(ids), flavour
        inputs = {t["rollout_id"]: t["input"] for t in summary[flavour]["seen"]}
        assert {r["rollout_id"]: r["final_reward"] for r in rollouts} == {
            rollout_id: inputs[rollout_id]["x"] / 10 for rollout_id in ids
        }
        status = daemon.status()
        assert (status["tasks"]["completed"], status["duplicates"], status["unsolicited"]) == (6, 0, 0)


def test_agentlightning_commands_are_handed_on_and_python_m_agl_cli_stays_agl(compat_python: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(compat_python), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=compat_env(),
            check=False,
        )

    missing = run("-m", "agl_cli", "vllm", "serve", "m")  # vllm is an optional extra of agentlightning
    assert missing.returncode == 1
    assert missing.stderr.strip() == "agl: 'agl vllm' needs the Python module 'vllm', which is not installed."
    own = run("-m", "agl_cli", "--version")
    assert own.stdout.startswith("agl ")
    # Whichever package wrote bin/agl last, the agentlightning commands are there, and their
    # usage errors come through as agentlightning's argparse made them, with its exit status.
    script = compat_python.parent / "agl"
    via_script = subprocess.run(
        [str(script), "store", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=120,
        env=compat_env(),
        check=False,
    )
    assert via_script.returncode == 2, via_script.stderr
    assert "usage: agl store" in via_script.stderr and "--no-such-flag" in via_script.stderr


def test_the_embedded_server_suite_passes_beside_agentlightning(compat_python: Path) -> None:
    """tests/beside_agentlightning/ needs agentlightning importable, so it runs in that environment."""
    result = subprocess.run(
        [str(compat_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/beside_agentlightning"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=compat_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]


def test_agl_cli_installs_beside_agentlightning_0_3_0(compat_python: Path) -> None:
    result = subprocess.run(
        [str(compat_python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout
