"""`agl tasks`: list, show and cancel tasks."""

from __future__ import annotations

import json

from cli_runner import agl, assert_one_line_error, post_rollout
from daemon import Daemon


def test_list_shows_tasks_in_queue_order_and_filters_by_status(daemon: Daemon) -> None:
    first, second, third = daemon.queue("a", "b", "c")
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == first
    everything = json.loads(agl("tasks", "list", "--json", daemon=daemon).stdout)
    assert [t["rollout_id"] for t in everything] == [first, second, third]
    queued = json.loads(agl("tasks", "list", "--status", "queued", "--json", daemon=daemon).stdout)
    assert [t["rollout_id"] for t in queued] == [second, third]
    table = agl("tasks", "list", "--limit", "2", daemon=daemon)
    assert table.returncode == 0, table.stderr
    assert first in table.stdout and second in table.stdout and third not in table.stdout
    assert "claimed" in table.stdout


def test_a_bad_status_is_a_usage_error(daemon: Daemon) -> None:
    result = agl("tasks", "list", "--status", "lost", daemon=daemon)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_show_gives_the_task_and_its_state(daemon: Daemon) -> None:
    (rollout_id,) = daemon.queue({"q": 1}, mode="val")
    task = json.loads(agl("tasks", "show", rollout_id, "--json", daemon=daemon).stdout)
    assert (task["rollout_id"], task["status"], task["mode"], task["input"]) == (
        rollout_id,
        "queued",
        "val",
        {"q": 1},
    )
    human = agl("tasks", "show", rollout_id, daemon=daemon)
    assert human.returncode == 0 and "queued" in human.stdout


def test_cancel_takes_a_task_out_of_the_queue(daemon: Daemon) -> None:
    (rollout_id,) = daemon.queue(1)
    result = agl("tasks", "cancel", rollout_id, daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Cancelled {rollout_id}."
    assert daemon.claim() is None
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "cancelled"


def test_cancelling_a_completed_task_is_refused_in_one_line(daemon: Daemon) -> None:
    (rollout_id,) = daemon.queue(1)
    daemon.claim()
    post_rollout(daemon, rollout_id)
    result = agl("tasks", "cancel", rollout_id, daemon=daemon)
    assert_one_line_error(result, f"Task '{rollout_id}' is completed and cannot be cancelled.")


def test_an_unknown_task_id_is_one_line(daemon: Daemon) -> None:
    assert_one_line_error(
        agl("tasks", "show", "rollout-nope", daemon=daemon), "No task with id 'rollout-nope'."
    )
    assert_one_line_error(
        agl("tasks", "cancel", "rollout-nope", daemon=daemon), "No task with id 'rollout-nope'."
    )
