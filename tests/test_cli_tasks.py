"""`agl tasks`: list, show, cancel and retry tasks; `agl pause` and `agl resume`."""

from __future__ import annotations

import json

from cli_runner import agl, assert_one_line_error, on_a_terminal, post_rollout
from daemon import Daemon

from agl_cli.api_limits import MAX_PER_REQUEST, PAGE_BYTES
from agl_cli.cli.tasks import SHOWN_ATTEMPTS


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


def test_a_list_cut_short_says_on_a_terminal_which_tasks_it_shows_of_how_many(daemon: Daemon) -> None:
    daemon.queue("a", "b", "c", "d")
    daemon.claim()

    def note(*options: str) -> str:
        return on_a_terminal("tasks", "list", *options, daemon=daemon, columns=200, stderr_too=True)[-1]

    assert note("--limit", "2", "--offset", "1") == "Tasks 2 to 3 of 4 shown; --offset 3 shows the next."
    assert (
        note("--status", "queued", "--limit", "2")
        == "Queued tasks 1 to 2 of 3 shown; --offset 2 shows the next."
    )
    assert "shown;" not in note("--offset", "2")  # the rest, to the last
    assert "shown;" not in note("--offset", "9")  # nothing there: nothing is shown, or said
    piped = agl("tasks", "list", "--limit", "2", daemon=daemon)
    assert (piped.returncode, piped.stderr) == (0, "")  # nothing for a script reading stderr


def test_a_page_of_big_tasks_comes_short_and_the_listing_asks_on_for_the_rest(daemon: Daemon) -> None:
    ids = daemon.queue(*(f"{n}" + "x" * 1_000_000 for n in range(6)))
    page = daemon.api("GET", "/v1/tasks", params={"limit": 6}).json()["tasks"]
    assert 1 <= len(page) < 6 and sum(len(task["input"]) for task in page) >= PAGE_BYTES - 1_000_000
    listed = json.loads(agl("tasks", "list", "--limit", "6", "--json", daemon=daemon).stdout)
    assert [task["rollout_id"] for task in listed] == ids
    assert [
        task["rollout_id"]
        for task in json.loads(agl("tasks", "list", "--limit", "2", "--json", daemon=daemon).stdout)
    ] == ids[:2]


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


def test_show_folds_a_long_value_to_the_screen_without_widening_every_line(daemon: Daemon) -> None:
    (rollout_id,) = daemon.queue("a long prompt " * 400)
    lines = on_a_terminal("tasks", "show", rollout_id, daemon=daemon, columns=100)
    assert max(len(line) for line in lines) <= 100 and len(lines) < 100
    assert "".join(lines).replace(" ", "").count("alongprompt") == 400  # folded, none of it lost


def test_show_lists_the_latest_attempts_of_a_task(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("again and again")
    for _ in range(SHOWN_ATTEMPTS + 1):
        assert daemon.claim() is not None
        daemon.fail_attempt(rollout_id)
        daemon.api("POST", "/v1/tasks/retry", json={"rollout_ids": [rollout_id]}).raise_for_status()
    daemon.claim()
    shown = agl("tasks", "show", rollout_id, daemon=daemon)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    start = lines.index(f"attempts (the last {SHOWN_ATTEMPTS} of {SHOWN_ATTEMPTS + 2})")
    rows = [line.split() for line in lines[start + 2 :]]
    assert [(row[0], row[2]) for row in rows] == [
        *((str(n), "failed") for n in range(3, SHOWN_ATTEMPTS + 2)),
        (str(SHOWN_ATTEMPTS + 2), "preparing"),
    ]
    as_json = json.loads(agl("tasks", "show", rollout_id, "--json", daemon=daemon).stdout)
    assert as_json["num_claims"] == SHOWN_ATTEMPTS + 2
    assert [(a["sequence_id"], a["status"]) for a in as_json["attempts"]] == [
        (int(number), status) for number, status in ((row[0], row[2]) for row in rows)
    ]  # the same attempts as the human output


def test_cancel_takes_a_task_out_of_the_queue(daemon: Daemon) -> None:
    (rollout_id,) = daemon.queue(1)
    result = agl("tasks", "cancel", rollout_id, daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Cancelled {rollout_id}."
    assert daemon.claim() is None
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "cancelled"


def test_cancel_takes_several_tasks_at_once_and_json_gives_each_on_a_line(daemon: Daemon) -> None:
    first, second, kept = daemon.queue(1, 2, 3)
    result = agl("tasks", "cancel", second, first, "--json", daemon=daemon)
    assert result.returncode == 0, result.stderr
    cancelled = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(t["rollout_id"], t["status"]) for t in cancelled] == [
        (second, "cancelled"),
        (first, "cancelled"),
    ]
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == kept


def test_cancelling_several_tasks_where_one_has_ended_cancels_none(daemon: Daemon) -> None:
    done, queued = daemon.queue(1, 2)
    daemon.claim()
    post_rollout(daemon, done)
    result = agl("tasks", "cancel", queued, done, daemon=daemon)
    assert_one_line_error(result, f"Task '{done}' is completed and cannot be cancelled.")
    assert daemon.api("GET", f"/v1/tasks/{queued}").json()["status"] == "queued"


def test_cancel_queued_empties_the_queue_and_claimed_tasks_run_on(daemon: Daemon) -> None:
    claimed, *_ = daemon.queue(*range(4))
    daemon.claim()
    result = agl("tasks", "cancel", "--queued", daemon=daemon)
    assert (result.returncode, result.stdout.strip()) == (0, "Cancelled 3 queued tasks."), result.stderr
    assert daemon.claim() is None
    post_rollout(daemon, claimed)
    assert daemon.api("GET", f"/v1/tasks/{claimed}").json()["status"] == "completed"
    again = agl("tasks", "cancel", "--queued", "--json", daemon=daemon)
    assert json.loads(again.stdout) == {"cancelled": 0}


def test_cancel_takes_ids_or_queued_not_both_nor_neither(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue(1)
    for args, sentence in (
        ([], "Name the tasks to cancel, or give --queued."),
        (["--queued", rollout_id], "Name the tasks to cancel or give --queued, not both."),
    ):
        assert_one_line_error(agl("tasks", "cancel", *args, daemon=daemon), sentence, code=2)
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "queued"


def test_more_tasks_than_one_request_takes_are_refused_before_any_is_changed(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue(1)
    ids = [rollout_id, *(f"rollout-{n}" for n in range(MAX_PER_REQUEST))]
    for command, done in (("cancel", "cancelled"), ("retry", "retried")):
        result = agl("tasks", command, *ids, daemon=daemon)
        sentence = (
            f"Name at most 10,000 tasks at once (not 10,001): they are {done} all together or not at all."
        )
        assert_one_line_error(result, sentence, code=2)
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "queued"


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


def test_an_id_too_long_for_a_url_is_one_line_whatever_asks_for_it(daemon: Daemon) -> None:
    """httpx refuses a URL of 64 KB or more before it sends anything."""
    long = "x" * 66_000
    for command in (
        ["tasks", "show"],
        ["rollouts", "show"],
        ["resources", "show"],
        ["dashboard", "--print", "--rollout"],
    ):
        assert_one_line_error(
            agl(*command, long, daemon=daemon),
            "The request cannot be sent: its URL would be too long (an id or a value of 64 KB or more).",
        )


def test_a_long_id_is_quoted_by_its_start_and_its_length_wherever_a_sentence_names_it(daemon: Daemon) -> None:
    """An id sent in a body is not held to a URL's length; a sentence quoting 70 KB of it
    would fill the screen."""
    long = "rollout-" + "x" * 70_000
    quoted = "'rollout-" + "x" * 72 + "…' (70,008 characters)"
    assert_one_line_error(agl("tasks", "cancel", long, daemon=daemon), f"No task with id {quoted}.")
    assert_one_line_error(agl("tasks", "retry", long, daemon=daemon), f"No task with id {quoted}.")
    worker_chosen = "rollout-" + "y" * 1_000  # a URL carries it: the same sentence, shown its way
    shown = agl("rollouts", "show", worker_chosen, daemon=daemon)
    assert_one_line_error(shown, "No rollout with id 'rollout-" + "y" * 72 + "…' (1,008 characters).")
    assert daemon.api("GET", f"/v1/tasks/{'z' * 101}").json() == {
        "detail": "No task with id '" + "z" * 80 + "…' (101 characters)."
    }
    assert daemon.api("GET", f"/v1/tasks/{'z' * 100}").json() == {
        "detail": "No task with id '" + "z" * 100 + "'."
    }


def test_retry_queues_failed_and_cancelled_tasks_again_at_the_back(daemon: Daemon) -> None:
    failed, cancelled, waiting = daemon.queue(1, 2, 3)
    daemon.claim()
    daemon.fail_attempt(failed)
    agl("tasks", "cancel", cancelled, daemon=daemon)
    result = agl("tasks", "retry", failed, cancelled, daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"Retried {failed}.", f"Retried {cancelled}."]
    claims = [daemon.claim() for _ in range(3)]
    assert [(c["rollout_id"], c["num_claims"]) for c in claims if c] == [
        (waiting, 1),
        (failed, 2),
        (cancelled, 1),
    ]


def test_retrying_several_tasks_where_one_has_not_ended_retries_none(daemon: Daemon) -> None:
    cancelled, queued = daemon.queue(1, 2)
    agl("tasks", "cancel", cancelled, daemon=daemon)
    result = agl("tasks", "retry", cancelled, queued, "--json", daemon=daemon)
    assert_one_line_error(
        result, f"Task '{queued}' is queued and cannot be retried: only failed or cancelled tasks can."
    )
    assert daemon.api("GET", f"/v1/tasks/{cancelled}").json()["status"] == "cancelled"
    unknown = agl("tasks", "retry", "rollout-nope", daemon=daemon)
    assert_one_line_error(unknown, "No task with id 'rollout-nope'.")


def test_retry_failed_queues_every_failed_task_and_leaves_cancelled_ones(daemon: Daemon) -> None:
    first, second, cancelled = daemon.queue(1, 2, 3)
    for rollout_id in (first, second):
        daemon.claim()
        daemon.fail_attempt(rollout_id)
    agl("tasks", "cancel", cancelled, daemon=daemon)
    result = agl("tasks", "retry", "--failed", daemon=daemon)
    assert (result.returncode, result.stdout.strip()) == (0, "Retried 2 failed tasks."), result.stderr
    queued = json.loads(agl("tasks", "list", "--status", "queued", "--json", daemon=daemon).stdout)
    assert [t["rollout_id"] for t in queued] == [first, second]
    again = agl("tasks", "retry", "--failed", "--json", daemon=daemon)
    assert json.loads(again.stdout) == {"retried": 0}


def test_retry_takes_ids_or_failed_not_both_nor_neither(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue(1)
    agl("tasks", "cancel", rollout_id, daemon=daemon)
    for args, sentence in (
        ([], "Name the tasks to retry, or give --failed."),
        (["--failed", rollout_id], "Name the tasks to retry or give --failed, not both."),
    ):
        assert_one_line_error(agl("tasks", "retry", *args, daemon=daemon), sentence, code=2)
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "cancelled"


def test_pause_and_resume_say_what_the_queue_does_and_status_shows_it(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue(1)
    paused = agl("pause", daemon=daemon)
    assert (paused.returncode, paused.stdout.strip()) == (
        0, "The queue is paused: workers get no tasks until agl resume.",
    ), paused.stderr  # fmt: skip
    assert daemon.claim() is None
    assert "paused: workers get no tasks until agl resume" in agl("status", daemon=daemon).stdout
    assert json.loads(agl("pause", "--json", daemon=daemon).stdout) == {"paused": True}  # again: no change
    resumed = agl("resume", daemon=daemon)
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "The queue is running: workers get tasks.")
    assert json.loads(agl("resume", "--json", daemon=daemon).stdout) == {"paused": False}
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == rollout_id
