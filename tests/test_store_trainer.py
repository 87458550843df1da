"""A real agentlightning 0.3.0 `Trainer` with `store=LightningStoreClient(agl)`: the one line
a 0.3.0 user changes. Its runners dequeue, trace and report through the store API; agl
keeps all of it durably, and a `kill -9` of the daemon in the middle loses nothing."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from compat_env import WORKERS_DIR, compat_env, run_json
from daemon import Daemon, fetch, free_port, wait_until

pytestmark = pytest.mark.timeout(600)
TRAINER = WORKERS_DIR / "store_trainer_run.py"


def trainer_env(daemon: Daemon, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{daemon.url}/v1/traces",  # see the worker's docstring
        "AGL_SERVER_PORT": str(free_port()),  # where the Trainer's own relay listens
        **extra,
    }


def spans_in_agl(daemon: Daemon, rollout_id: str) -> list[dict[str, Any]]:
    page = daemon.post("/v1/agl/spans/search", json={"rollout_id": rollout_id, "attempt_id": "latest"}).json()
    spans: list[dict[str, Any]] = page["items"]
    return spans


def test_a_trainer_with_agl_as_its_store_runs_every_rollout_with_its_reward_and_spans(
    compat_python: Path, daemon: Daemon
) -> None:
    samples = 6
    summary = run_json(
        compat_python, str(TRAINER), daemon.url, "--samples", str(samples), "--runners", "2",
        env=trainer_env(daemon),
    )  # fmt: skip

    ids = summary["ids"]
    assert len(ids) == samples and set(summary["rollouts"]) == set(ids)
    for seen in summary["rollouts"].values():  # as the algorithm read them back from agl
        assert seen["status"] == "succeeded"
        assert seen["span_names"] == ["agentlightning.annotation", "work"]
        assert seen["rewards"] == [seen["input"]["x"] / 10]
    # agl's own view: the same rollouts as completed tasks and as results in the sequence.
    status = daemon.status()
    assert (status["tasks"]["completed"], status["rollouts"], status["duplicates"]) == (samples, samples, 0)
    results = {r["rollout_id"]: r for r in daemon.rollouts()}
    assert {rid: results[rid]["final_reward"] for rid in ids} == {
        rid: summary["rollouts"][rid]["input"]["x"] / 10 for rid in ids
    }
    assert {span["name"] for span in spans_in_agl(daemon, ids[0])} == {"agentlightning.annotation", "work"}


def test_a_trainer_survives_a_kill_9_of_agl_and_nothing_is_lost_or_doubled(
    compat_python: Path, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """agl is down for 2 s, as under the systemd unit in deploy/ (`RestartSec=2`): longer
    than 0.3.0's client waits by default, so the run's client is given the patience
    docs/store-api.md advises."""
    port = free_port()
    state = tmp_path / "state"
    daemon = make_daemon("--port", str(port), state_dir=state)
    samples = 8
    env = compat_env() | trainer_env(
        daemon,
        AGENT_SECONDS="0.4",
        ROLLOUT_PATIENCE="4",
        ALGORITHM_POLL="1",
        HEALTH_RETRY_DELAYS="0.1,0.2,0.5,1,2,4",
    )
    command = [str(compat_python), str(TRAINER), daemon.url, "--samples", str(samples), "--runners", "2"]
    with tempfile.TemporaryDirectory() as workdir:
        trainer = subprocess.Popen(
            [*command, "--direct"], env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            wait_until(lambda: daemon.status()["tasks"]["completed"] >= 2, "two rollouts to complete")
            daemon.kill()
            time.sleep(2)  # the outage itself, not a wait for anything
            daemon.start()  # the same port and state directory: a supervisor's restart
            output, errors = trainer.communicate(timeout=240)
        finally:
            trainer.kill()
    text = output.decode(errors="replace")
    assert trainer.returncode == 0, text[-3000:] + errors.decode(errors="replace")[-3000:]
    summary = json.loads(text.strip().splitlines()[-1])

    ids = summary["ids"]
    assert all(seen["status"] == "succeeded" for seen in summary["rollouts"].values())
    status = daemon.status()
    assert (status["tasks"]["completed"], status["rollouts"], status["duplicates"]) == (samples, samples, 0)
    results = daemon.rollouts()
    assert sorted(r["rollout_id"] for r in results) == sorted(ids)  # each once
    assert all(r["final_reward"] is not None for r in results)


def test_a_wait_with_no_time_limit_goes_on_across_a_stop_and_a_restart_of_agl(
    compat_python: Path, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The stop answers the wait 503, 0.3.0's client asks again once agl is back, and the
    wait ends when the rollout does: not with the nothing that had finished at the stop."""
    daemon = make_daemon("--port", str(free_port()), state_dir=tmp_path / "state")
    [queued] = daemon.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}]}).json()
    waiter = subprocess.Popen(
        [str(compat_python), str(WORKERS_DIR / "store_wait_run.py"), daemon.url, queued["rollout_id"]],
        env=compat_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: daemon.requests_in_flight() == 1, "the wait to reach agl", timeout=120)
        assert daemon.terminate() == 0
        daemon.start()  # the same port and state directory
        handed = daemon.post("/v1/agl/queues/rollouts/dequeue", json={"limit": 1}).json()[0]
        attempt = f"/v1/agl/rollouts/{queued['rollout_id']}/attempts/{handed['attempt']['attempt_id']}"
        daemon.post(attempt, json={"status": "succeeded"}).raise_for_status()
        output, errors = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, errors.decode(errors="replace")[-3000:]
    last = json.loads(output.decode().strip().splitlines()[-1])
    assert last == {"finished": [{"rollout_id": queued["rollout_id"], "status": "succeeded"}]}


def test_the_store_api_is_open_like_the_worker_routes_and_the_management_api_is_not(daemon: Daemon) -> None:
    assert daemon.get("/v1/agl/health").json() == {"status": "ok"}
    assert fetch("POST", f"{daemon.url}/v1/agl/queues/rollouts/dequeue").status_code == 200
    assert fetch("GET", f"{daemon.url}/v1/tasks").status_code == 401
