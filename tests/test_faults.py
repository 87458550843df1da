"""When the disk says no: a full store refuses writes with a 507 that says so, keeps
serving reads, keeps nothing half-written, and takes writes again once there is room."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from daemon import Daemon

LIMIT = 400_000  # bytes of database: a few hundred large tasks
BIG = "x" * 20_000
FULL = "The store is full (no space left on its disk, or its --max-db-size reached); nothing was written."


def test_a_full_store_refuses_writes_with_a_507_serves_reads_and_recovers(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    daemon = make_daemon("--max-db-size", str(LIMIT), state_dir=state)
    accepted = 0
    for size in (5, 1):  # fill it: five tasks at a time, then the room left one at a time
        for _ in range(200):  # far more than fits
            response = daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": BIG} for _ in range(size)]})
            if response.status_code != 201:
                break
            accepted += size
        assert (response.status_code, response.json()) == (507, {"detail": FULL})
    assert accepted > 0

    # Every door's writes are refused the same way, and the daemon goes on.
    publish = daemon.api("POST", "/v1/resources", json={"resources": {"p": {
        "resource_type": "prompt_template", "template": BIG * 3, "engine": "jinja"}}})  # fmt: skip
    report = daemon.post("/rollout", json={"rollout_id": "late", "metadata": {"big": BIG * 3}})
    enqueue = daemon.post(
        "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": BIG} for _ in range(5)]}
    )
    assert [(r.status_code, r.json()["detail"]) for r in (publish, report, enqueue)] == [(507, FULL)] * 3
    status = daemon.status()  # reads go on, and show nothing half-written
    assert (status["tasks"]["queued"], status["rollouts"], status["resources"]) == (accepted, 0, 0)

    daemon.close()  # room again: the same state directory without the limit
    roomy = make_daemon(state_dir=state)
    assert roomy.api("POST", "/v1/tasks", json={"tasks": [{"input": BIG}]}).status_code == 201
    assert roomy.status()["tasks"]["queued"] == accepted + 1
