"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

One daemon and one browser serve every test here; each test opens its own page and
looks only at what it did itself (or at counts it reads from the daemon first), so the
tests stay independent. Screenshots of the page, light and dark, are saved in
`.agl-test/artifacts/` (the README's picture is one of them).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from chromium import launched, playwright
from daemon import Daemon, fetch, free_port, wait_until

from agl_cli.cli import output
from agl_cli.server.sign_in import REFUSED

ARTIFACTS = Path(__file__).resolve().parent.parent / ".agl-test" / "artifacts"
WAIT_MS = 10_000

expect = playwright.expect
Page = playwright.Page


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    started = Daemon(tmp_path_factory.mktemp("dashboard") / "state").start()
    yield started
    started.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched() as browser:
        yield browser


class Console:
    """What the page said on its console, and the errors it raised."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))


@contextlib.contextmanager
def signed_in(browser: Any, daemon: Daemon, **options: Any) -> Iterator[tuple[Any, Console]]:
    """A page of `daemon`'s dashboard, signed in with its token, and what its console
    says; closed after the block. `options`: the browser context's (its viewport...)."""
    context = browser.new_context(**options)
    page = context.new_page()
    console = Console(page)
    page.goto(f"{daemon.url}/#token={daemon.token}")
    try:
        yield page, console
    finally:
        context.close()


@pytest.fixture
def open_page(browser: Any, daemon: Daemon) -> Iterator[Any]:
    """Open the dashboard as `agl dashboard` does; after the test, the console must be clean."""
    opened: list[tuple[Any, Console, bool]] = []

    def open_(fragment: str | None = None, color_scheme: str = "light", clean: bool = True) -> Any:
        """`fragment`: what follows the `#`; by default, a fresh sign-in code."""
        context = browser.new_context(color_scheme=color_scheme, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        console = Console(page)
        opened.append((context, console, clean))
        page.goto(f"{daemon.url}/#{fragment or 'code=' + sign_in_code(daemon)}")
        return page

    yield open_
    for context, console, clean in opened:
        context.close()
        assert not clean or console.errors == []


def complete(daemon: Daemon, mode: str, rewards: list[float], **extra: Any) -> list[str]:
    """Queue one task per reward in `mode`, and report each as a legacy worker does (no
    task in the body). No test leaves a task queued, so the claims take these ones."""
    ids = daemon.queue(*range(len(rewards)), mode=mode)
    for rollout_id, reward in zip(ids, rewards, strict=True):
        task = daemon.claim()
        assert task is not None and task["rollout_id"] == rollout_id
        daemon.report(rollout_id, final_reward=reward, **extra)
    return ids


def sign_in_code(daemon: Daemon) -> str:
    """A one-time code, as `agl dashboard` asks for one to hand the browser."""
    issued = daemon.api("POST", "/v1/dashboard/sign-in-codes")
    issued.raise_for_status()
    code: str = issued.json()["code"]
    return code


def counted(daemon: Daemon, status: str) -> str:
    return f"{daemon.status()['tasks'][status]:,}"


def test_the_page_signs_in_with_its_code_with_no_console_errors_and_takes_it_out_of_the_address(
    daemon: Daemon, open_page: Any
) -> None:
    [waiting] = daemon.queue("waiting", mode="train")
    try:
        page = open_page()
        expect(page.locator("#count-queued")).to_have_text(counted(daemon, "queued"), timeout=WAIT_MS)
        expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
        assert page.url == f"{daemon.url}/"
        assert page.evaluate("sessionStorage.getItem('agl-token')") == daemon.token
    finally:
        daemon.api("POST", f"/v1/tasks/{waiting}/cancel").raise_for_status()


def test_a_used_sign_in_code_is_refused_in_one_clear_message_and_shows_no_data(
    daemon: Daemon, open_page: Any
) -> None:
    code = sign_in_code(daemon)
    first = open_page(f"code={code}")
    expect(first.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
    again = open_page(f"code={code}", clean=False)  # the daemon's 401 is on the console
    expect(again.locator("#login-reason")).to_have_text(REFUSED, timeout=WAIT_MS)
    expect(again.locator("#board")).to_be_hidden()
    assert again.url == f"{daemon.url}/"
    assert again.evaluate("sessionStorage.getItem('agl-token')") is None


def test_a_sign_in_code_too_long_to_be_one_is_refused_in_one_sentence(daemon: Daemon, open_page: Any) -> None:
    """The daemon's 422 lists every problem with the body (a list, not a sentence): the page
    says in its own words what is wrong."""
    page = open_page("code=" + "x" * 101, clean=False)  # the daemon's 422 is on the console
    expect(page.locator("#login-reason")).to_have_text(
        "This sign-in link is not one the daemon gave: run agl dashboard again, or paste the token.",
        timeout=WAIT_MS,
    )
    expect(page.locator("#token")).to_be_visible()
    expect(page.locator("#board")).to_be_hidden()


def test_counts_rollouts_and_the_chart_follow_the_run_without_a_reload(
    daemon: Daemon, open_page: Any
) -> None:
    page = open_page()
    expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
    page.evaluate("window.sameDocument = true")
    ids = complete(daemon, "train", [0.1, 0.3]) + complete(daemon, "val", [0.9])
    expect(page.locator("#count-completed")).to_have_text(counted(daemon, "completed"), timeout=WAIT_MS)
    rows = page.locator("#rollouts tbody tr")
    expect(rows.first).to_have_attribute("data-rollout-id", ids[-1], timeout=WAIT_MS)
    newest = rows.first.locator("td")
    expect(newest.nth(2)).to_have_text("val")  # the task's mode: the worker sent none
    expect(newest.nth(3)).to_have_text("0.900")
    expect(page.locator("#chart path.average-train")).to_have_attribute("d", _drawn(), timeout=WAIT_MS)
    expect(page.locator("#chart path.average-val")).to_have_attribute("d", _drawn())
    expect(page.locator("#legend [data-mode=val]")).to_contain_text("rollout")

    more = complete(daemon, "train", [0.5])
    expect(rows.first).to_have_attribute("data-rollout-id", more[0], timeout=WAIT_MS)
    expect(page.locator("#count-completed")).to_have_text(counted(daemon, "completed"), timeout=WAIT_MS)
    assert page.evaluate("window.sameDocument") is True
    size = output.size(daemon.status()["database"]["bytes"])  # the run is still: it stays so
    expect(page.locator("#database-size")).to_have_text(size, timeout=WAIT_MS)
    expect(page.locator("#database-size")).to_have_attribute("title", re.compile(r" free on disk"))
    expect(page.locator("#forgotten")).to_be_hidden()  # this daemon forgets no task


def test_the_moving_average_weighs_each_bucket_by_its_rewarded_rollouts_and_counts_in_words(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    complete(fresh, "test", [0.5])
    with signed_in(browser, fresh) as (page, console):
        legend = page.locator("#legend [data-mode=test]")
        expect(legend).to_have_text("test: moving average 0.500 (1 rollout)", timeout=WAIT_MS)
        # Two buckets: one rollout rewarded 0; then nine, of which one was rewarded (1).
        line = {"means": [0.0, 1.0], "rollouts": [1, 9], "rewarded": [1, 1]}
        assert page.evaluate("line => movingAverage(line)", line) == [0.0, 0.5]
    assert console.errors == []


_LABELS_LEFT_OF_THE_CHART = """() => {
  const chart = document.querySelector("#chart svg").getBoundingClientRect();
  const labels = [...document.querySelectorAll("#chart svg g.axis:first-of-type text")];
  return labels.filter((label) => label.getBoundingClientRect().x < chart.x).map((label) => label.textContent);
}"""


def test_the_charts_tick_labels_of_huge_rewards_are_short_and_whole_inside_the_chart(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    complete(fresh, "train", [1e300])
    complete(fresh, "val", [-1.5e300])
    with signed_in(browser, fresh) as (page, console):
        expect(page.locator("#chart path.average-val")).to_have_attribute("d", _drawn(), timeout=WAIT_MS)
        labels = page.locator("#chart svg g.axis").first.locator("text")
        # Measured in one step: each summary redraws the labels, so one by one could meet a gap.
        outside = page.evaluate(_LABELS_LEFT_OF_THE_CHART)
        assert outside == []
        expect(labels.first).to_have_text("-1.5e+300")
        expect(labels.last).to_have_text("1e+300")
        expect(labels.nth(1)).to_have_text("-1e+300")
    assert console.errors == []


def test_rewards_at_the_edge_of_a_floats_range_are_charted_and_the_page_still_loads(
    make_daemon: Any, browser: Any
) -> None:
    """Any worker may send them (the worker routes are open): one of 1.8e308 made the page's
    axis span infinite and its ticks endless, so the page never loaded again; two summed
    past a float's range read as no reward."""
    fresh = make_daemon()
    largest = sys.float_info.max
    ids = complete(fresh, "train", [largest, largest]) + complete(fresh, "val", [-largest])
    with signed_in(browser, fresh) as (page, console):
        expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
        expect(page.locator("#rollouts tbody tr").first).to_have_attribute("data-rollout-id", ids[-1])
        for mode, mean, count in (("train", largest, "2 rollouts"), ("val", -largest, "1 rollout")):
            legend = page.locator(f"#legend [data-mode={mode}]")
            expect(legend).to_have_text(
                f"{mode}: moving average {mean!r} ({count})"
            )  # as JavaScript writes it
            expect(page.locator(f"#chart path.average-{mode}")).to_have_attribute("d", _drawn())
        assert page.evaluate(_LABELS_LEFT_OF_THE_CHART) == []
        assert (
            page.evaluate("line => movingAverage(line)", {"means": [largest] * 3, "rewarded": [1, 2, 3]})
            == pytest.approx([largest] * 3)  # each a number, none past the range
        )
    assert console.errors == []


def test_tasks_forgotten_with_their_results_are_counted_beside_the_rest(
    make_daemon: Any, browser: Any
) -> None:
    short = make_daemon("--rollout-retention", "0.2", "--forget-tasks")
    complete(short, "train", [0.5])
    with signed_in(browser, short) as (page, console):
        expect(page.locator("#count-forgotten")).to_have_text("1", timeout=WAIT_MS)
        expect(page.locator("#forgotten")).to_be_visible()
        expect(page.locator("#count-completed")).to_have_text("0")
    assert console.errors == []


def test_rollouts_all_deleted_by_the_retention_setting_are_said_to_be_so_not_yet_to_come(
    make_daemon: Any, browser: Any
) -> None:
    short = make_daemon("--rollout-retention", "0.2")
    complete(short, "train", [0.5, 0.7])
    wait_until(lambda: short.metric("agl_rollouts_pruned_total") == 2, "the results to be deleted", 30)
    with signed_in(browser, short) as (page, console):
        expect(page.locator("#count-completed")).to_have_text("2", timeout=WAIT_MS)
        expect(page.locator("#rollouts-empty")).to_have_text(
            "No rollout is kept: --rollout-retention deleted every one that came (the chart keeps their rewards)."
        )
    assert console.errors == []


def test_a_restarted_daemon_whose_store_started_over_is_followed_without_a_reload(
    make_daemon: Any, browser: Any
) -> None:
    """A `--memory` daemon restarted holds none of the rollouts the page shows, and numbers
    its new ones from 1 again: the page reads its data again and follows the new ones."""
    memory = make_daemon("--memory", "--port", str(free_port()))
    before = complete(memory, "train", [0.1, 0.2, 0.3])
    with signed_in(browser, memory) as (page, console):
        rows = page.locator("#rollouts tbody tr")
        expect(rows.first).to_have_attribute("data-rollout-id", before[-1], timeout=WAIT_MS)
        page.evaluate("window.sameDocument = true")
        memory.kill()
        memory.start()
        after = complete(memory, "val", [0.9])
        expect(rows).to_have_count(1, timeout=WAIT_MS)
        expect(rows.first).to_have_attribute("data-rollout-id", after[0])
        expect(page.locator("#count-rollouts")).to_have_text("1")
        expect(page.locator("#rate-seconds")).to_have_text(re.compile(r"^[1-5]?\d$"))  # rates over its uptime
        assert page.evaluate("window.sameDocument") is True
    # the stream cut by the kill, and the retries while no daemon listens, are on the console
    assert [error for error in console.errors if "Failed to load resource: net::ERR_" not in error] == []


def test_a_first_load_that_fails_is_retried_until_the_daemon_answers(browser: Any, daemon: Daemon) -> None:
    """As the stream is after a disconnect: the daemon may be starting, or restarting."""
    context = browser.new_context()
    try:
        context.route("**/v1/dashboard", lambda route: route.abort())  # as if nothing listened
        page = context.new_page()
        console = Console(page)
        page.goto(f"{daemon.url}/#token={daemon.token}")
        connection = page.locator("#connection")
        expect(connection).to_have_text(re.compile(r"^The daemon did not answer; retrying in \d+ s…$"))
        context.unroute("**/v1/dashboard")
        expect(connection).to_have_text("Live", timeout=WAIT_MS)
        expect(page.locator("#count-completed")).to_have_text(counted(daemon, "completed"))
        expect(page.locator("#problem")).to_be_hidden()
    finally:
        context.close()
    # the requests refused on purpose are on the console
    assert [error for error in console.errors if "Failed to load resource: net::ERR_" not in error] == []


def _drawn() -> re.Pattern[str]:
    """A path's `d` once the chart has drawn at least one point."""
    return re.compile(r"^M[\d.]+,[\d.]+")


def test_a_paused_queue_is_said_to_be_so_until_it_is_resumed(daemon: Daemon, open_page: Any) -> None:
    page = open_page()
    expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
    paused = page.locator("#paused")
    expect(paused).to_be_hidden()
    daemon.api("POST", "/v1/queue/pause").raise_for_status()
    try:
        expect(paused).to_be_visible(timeout=WAIT_MS)
        expect(paused).to_contain_text("workers get no tasks until agl resume")
        expect(page.locator("#pause-toggle")).to_have_text("Resume the queue")
    finally:  # the other tests share this daemon
        daemon.api("POST", "/v1/queue/resume").raise_for_status()
    expect(paused).to_be_hidden(timeout=WAIT_MS)


def test_the_page_pauses_and_resumes_the_queue(daemon: Daemon, open_page: Any) -> None:
    page = open_page()
    toggle = page.locator("#pause-toggle")
    expect(toggle).to_have_text("Pause the queue", timeout=WAIT_MS)
    try:
        toggle.click()
        expect(page.locator("#paused")).to_be_visible()
        assert daemon.status()["paused"] is True
        expect(toggle).to_have_text("Resume the queue")
        toggle.click()
        expect(page.locator("#paused")).to_be_hidden()
        assert daemon.status()["paused"] is False
    finally:  # the other tests share this daemon
        daemon.api("POST", "/v1/queue/resume").raise_for_status()


def test_a_rollout_opens_in_detail_with_its_triplets_trace_logs_and_attempts(
    daemon: Daemon, open_page: Any
) -> None:
    triplets = [
        {"prompt": {"token_ids": [1, 2, 3]}, "response": {"token_ids": [4, 5]}, "reward": 0.25},
        {"prompt": {"token_ids": [6]}, "response": {"token_ids": [7, 8, 9, 10]}, "reward": 0.75},
    ]
    trace = [
        {"name": "agent.run", "context": {"span_id": "0xa"}, "parent_id": None,
         "start_time": "2024-05-01T12:00:00.000000Z", "end_time": "2024-05-01T12:00:02.000000Z",
         "status": {"status_code": "OK"}},
        {"name": "openai.chat", "context": {"span_id": "0xb"}, "parent_id": "0xa",
         "start_time": "2024-05-01T12:00:00.500000Z", "end_time": "2024-05-01T12:00:01.500000Z",
         "status": {"status_code": "OK"}},
    ]  # fmt: skip
    [rollout_id] = complete(daemon, "test", [0.5], triplets=triplets, trace=trace, logs=["step 1", "done"])
    page = open_page()
    button = page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button")
    button.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    expect(dialog.locator("h3", has_text="Triplets (2)")).to_be_visible(timeout=WAIT_MS)
    triplet_rows = dialog.locator("table.triplets tbody tr")
    expect(triplet_rows).to_have_count(2)
    expect(triplet_rows.nth(1).locator("td").nth(1)).to_have_text("1")  # prompt tokens
    expect(triplet_rows.nth(1).locator("td").nth(2)).to_have_text("4")  # response tokens
    spans = dialog.locator("table.waterfall tbody tr")
    expect(spans).to_have_count(2)
    expect(spans.nth(1).locator("td").nth(0)).to_have_text("openai.chat")
    expect(spans.nth(1).locator("td").nth(2)).to_have_text("1.0 s")
    expect(dialog.locator("pre", has_text="step 1")).to_be_visible()
    expect(dialog.locator("dl.facts")).to_contain_text("test")
    page.screenshot(path=str(_artifact("dashboard-detail.png")))
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_an_open_rollout_is_in_the_address_back_closes_it_and_forward_opens_it_again(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    [rollout_id] = complete(fresh, "train", [0.25])
    with signed_in(browser, fresh) as (page, console):
        dialog, title = page.locator("#detail"), page.locator("#detail-title")
        page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button").click(timeout=WAIT_MS)
        expect(dialog).to_be_visible()
        expect(page).to_have_url(f"{fresh.url}/#rollout={rollout_id}")
        page.go_back()
        expect(dialog).to_be_hidden()
        expect(page).to_have_url(f"{fresh.url}/")
        page.go_forward()
        expect(title).to_have_text(rollout_id)
        expect(dialog.locator("dl.facts")).to_contain_text("0.250", timeout=WAIT_MS)
        page.keyboard.press("Escape")  # closing it takes its step back
        expect(dialog).to_be_hidden()
        expect(page).to_have_url(f"{fresh.url}/")
    assert console.errors == []


def test_a_link_to_a_rollout_opens_it_once_signed_in_and_says_so_of_an_unknown_one(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    odd = "a b&c=d#e/ü"  # what a fragment's parameter must escape
    fresh.report(odd, final_reward=0.75)  # unsolicited: no task is needed
    link = f"{fresh.url}/#{urlencode({'rollout': odd})}"
    context = browser.new_context()
    try:
        page = context.new_page()
        console = Console(page)
        page.goto(link)  # a teammate's link: the token is not in it
        page.fill("#token", fresh.token)
        page.press("#token", "Enter")
        title = page.locator("#detail-title")
        expect(title).to_have_text(odd, timeout=WAIT_MS)
        expect(page.locator("#detail dl.facts")).to_contain_text("unsolicited", timeout=WAIT_MS)
        page.reload()  # the address alone opens it again
        expect(title).to_have_text(odd, timeout=WAIT_MS)
        expect(page.locator("#detail dl.facts")).to_contain_text("unsolicited", timeout=WAIT_MS)
        page.keyboard.press("Escape")  # arrived at by a link: the rollout leaves the address
        expect(page).to_have_url(f"{fresh.url}/")
        page.goto(f"{fresh.url}/#rollout=nope")
        expect(title).to_have_text("nope")
        expect(page.locator("#detail-body")).to_have_text(
            "No rollout or task with id 'nope'.", timeout=WAIT_MS
        )
        # a sign-in address that names a rollout, as a printed one would: the token leaves it
        page.goto(f"{fresh.url}/?again#token={fresh.token}&{urlencode({'rollout': odd})}")
        expect(title).to_have_text(odd, timeout=WAIT_MS)
        expect(page).to_have_url(f"{fresh.url}/?again#{urlencode({'rollout': odd})}")
    finally:
        context.close()
    # the browser's own lines: the first load, before the token; the unknown rollout
    assert [re.sub(r".*status of (\d+).*", r"\1", error) for error in console.errors] == ["401", "404"]


def test_a_long_rollout_id_is_shortened_in_the_dialogs_heading_and_copied_whole(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    long_id = "r" * 2999 + "9"
    fresh.report(long_id, final_reward=0.5)  # unsolicited: no task is needed
    with signed_in(browser, fresh) as (page, console):
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.locator("#rollouts tbody tr button").first.click(timeout=WAIT_MS)
        title = page.locator("#detail-title")
        expect(title).to_have_text("r" * 40 + "…" + "r" * 7 + "9")
        assert title.locator("bdi.shortened").get_attribute("title") == long_id
        assert _fits(title)
        _selected(title)
        page.keyboard.press("Control+C")
        assert page.evaluate("navigator.clipboard.readText()") == long_id
    assert console.errors == []


def test_integers_too_long_for_a_javascript_number_are_shown_as_they_are_kept(
    daemon: Daemon, open_page: Any
) -> None:
    """A seed in an input or a hash in a result's metadata keeps every digit on the page, as
    the daemon keeps it: JavaScript's numbers would show 9223372036854775807 as ...808."""
    seed, digest = 2**63 - 1, 2**64 - 1
    [rollout_id] = daemon.queue({"seed": seed, "step": 0.5}, mode="test")
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == rollout_id
    daemon.report(rollout_id, final_reward=0.5, metadata={"hash": digest})
    page = open_page()
    page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button").click()
    dialog = page.locator("#detail")
    expect(dialog.locator("pre", has_text=f'"seed": {seed},')).to_be_visible(timeout=WAIT_MS)
    expect(dialog.locator("pre", has_text='"step": 0.5')).to_be_visible()
    expect(dialog.locator("pre", has_text=f'"hash": {digest}')).to_be_visible()
    page.keyboard.press("Escape")


LONG = 200  # characters in a name with no space (the longest id a bundle may have): wider than a screen


def test_the_detail_dialog_wraps_token_id_previews_and_long_span_names(
    daemon: Daemon, open_page: Any
) -> None:
    triplets = [{"prompt": {"token_ids": list(range(1000, 1300))}, "response": [7, 8], "reward": 1.0}]
    trace = [{"name": "s" * LONG, "context": {"span_id": "0x1"}, "start_time": 1.0, "end_time": 2.0}]
    [rollout_id] = complete(daemon, "train", [1.0], triplets=triplets, trace=trace)
    page = open_page()
    page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button").click(timeout=WAIT_MS)
    dialog = page.locator("#detail")
    expect(dialog.locator("table.waterfall td").first).to_have_text("s" * LONG, timeout=WAIT_MS)
    expect(dialog.locator("table.triplets td").nth(4)).to_contain_text("1000,1001")  # the 240-character start
    assert _fits(dialog)
    assert _fits(page.locator("#detail-close"))


def test_one_long_name_does_not_widen_the_page(make_daemon: Any, browser: Any) -> None:
    """A bundle's id, a resource's key and a worker's id with no space in them wrap (or
    scroll) inside their panels."""
    fresh = make_daemon()
    fresh.publish({"k" * LONG: {"resource_type": "llm", "endpoint": "http://llm", "model": "m"}}, "r" * LONG)
    fresh.post(f"/v1/agl/workers/{'w' * LONG}", json={"heartbeat_stats": {}}).raise_for_status()
    with signed_in(browser, fresh, viewport={"width": 1280, "height": 900}) as (page, console):
        expect(page.locator("#workers tbody tr")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator("#resources tbody tr")).to_have_count(1, timeout=WAIT_MS)
        assert _fits(page.locator("html"))
        for panel in page.locator("section.panel").all():
            assert _fits(panel)
    assert console.errors == []


def test_long_worker_ids_bundle_ids_and_resource_names_are_shortened_and_copied_whole(
    make_daemon: Any, browser: Any
) -> None:
    """As rollout ids are: the first 17 and last 4 characters, the whole in the title and in
    a copy, so that one worker or resource does not make the page thousands of pixels long."""
    worker, key, bundle = "w" * 2999 + "1", "k" * 4999 + "2", "b" * (LONG - 1) + "3"
    model = "m" * 99 + "4"
    fresh = make_daemon("--max-attempts", "1")
    fresh.publish({key: {"resource_type": "llm", "endpoint": "http://llm", "model": model}}, bundle)
    fresh.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}]}).raise_for_status()
    [handed] = fresh.post("/v1/agl/queues/rollouts/dequeue", json={"worker_id": worker}).json()
    fresh.fail_attempt(handed["rollout_id"])
    with signed_in(browser, fresh, viewport={"width": 1280, "height": 900}) as (page, console):
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        shown = {
            page.locator("#workers tbody td").first: "w" * 17 + "…www1",
            page.locator("#resources tbody td").first: "b" * 17 + "…bbb3 (latest)",
            page.locator("#resources tbody td").nth(3): "k" * 17 + "…kkk2: llm " + "m" * 40 + "…mmmmmmm4",
            page.locator("#failures .history li").first: "#1 failed on " + "w" * 17 + "…www1",
        }
        for element, text in shown.items():
            expect(element).to_have_text(text, timeout=WAIT_MS)
        assert page.locator("#workers tbody td").first.locator("bdi").first.get_attribute("title") == worker
        assert page.evaluate("document.documentElement.scrollHeight") < 2000
        for element, whole in [
            (page.locator("#workers tbody td").first, worker),
            (page.locator("#resources tbody td").nth(3).locator("bdi.shortened").first, key),
        ]:
            _selected(element)
            page.keyboard.press("Control+C")
            assert page.evaluate("navigator.clipboard.readText()") == whole
        page.locator("#failures tbody td button").first.click()
        attempt = page.locator("#detail table.grid tbody tr").first.locator("td")
        expect(attempt.nth(3)).to_have_text("w" * 17 + "…www1", timeout=WAIT_MS)  # its worker
    assert console.errors == []


def test_on_a_phone_tables_scroll_in_their_panels_the_dialog_fits_and_the_chart_stays_readable(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon("--task-timeout", "0.2", "--max-attempts", "1")
    [lost] = fresh.queue("lost", mode="train")
    wait_until(lambda: fresh.claim() is not None, "the task to be handed out", 10)
    [rollout_id] = complete(fresh, "train", [0.5])
    phone = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}
    with signed_in(browser, fresh, **phone) as (page, console):
        expect(page.locator(f"#failures tr[data-rollout-id='{lost}']")).to_contain_text(
            "failed", timeout=WAIT_MS
        )
        expect(page.locator("#chart path.average-train")).to_have_attribute("d", _drawn(), timeout=WAIT_MS)
        assert _fits(page.locator("html"))
        # the chart is drawn at the screen's scale: its 11 px labels are 11 px
        scale = page.locator("#chart svg").evaluate(
            "s => s.getBoundingClientRect().width / s.viewBox.baseVal.width"
        )
        assert scale == pytest.approx(1, abs=0.02)
        page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button").click()
        expect(page.locator("#detail h3", has_text="Metadata")).to_be_visible(timeout=WAIT_MS)
        assert _fits(page.locator("#detail"))
        assert _fits(page.locator("#detail-close"))
    assert console.errors == []


def test_on_a_narrow_phone_the_empty_chart_says_its_whole_message_inside_the_chart(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    phone = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
    with signed_in(browser, fresh, **phone) as (page, console):
        empty = page.locator("#chart .empty-chart")
        expect(empty).to_have_text(
            "No rewards yet: the chart starts with the first rewarded rollout.", timeout=WAIT_MS
        )
        expect(empty).to_be_visible()
        chart, said = page.locator("#chart").bounding_box(), empty.bounding_box()
        assert chart is not None and said is not None
        assert chart["x"] <= said["x"] and said["x"] + said["width"] <= chart["x"] + chart["width"]
        assert _fits(empty)
    assert console.errors == []


def _words_broken(element: Any) -> list[str]:
    """The words in `element` that are laid out over more than one line."""
    broken: list[str] = element.evaluate(
        """element => {
            const broken = [];
            const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (const word of node.data.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, word.index);
                    range.setEnd(node, word.index + word[0].length);
                    const lines = new Set([...range.getClientRects()].map((rect) => Math.round(rect.top)));
                    if (lines.size > 1) broken.push(word[0]);
                }
            }
            return broken;
        }"""
    )
    return broken


def test_on_a_narrow_phone_the_attempt_history_breaks_no_word(make_daemon: Any, browser: Any) -> None:
    short = make_daemon("--task-timeout", "0.2")
    [rollout_id] = short.queue("slow", mode="train")
    for _ in range(2):  # the first claim runs out: the task is handed out again
        wait_until(lambda: short.claim() is not None, "the task to be handed out", 10)
    short.report(rollout_id, final_reward=1.0)
    phone = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
    with signed_in(browser, short, **phone) as (page, console):
        history = page.locator(f"#failures tr[data-rollout-id='{rollout_id}'] .history")
        expect(history).to_contain_text("succeeded", timeout=WAIT_MS)
        expect(history).to_contain_text("timeout")
        assert _words_broken(history) == []
        assert _fits(page.locator("html"))
    assert console.errors == []


def test_older_is_offered_only_when_there_are_older_rollouts(make_daemon: Any, browser: Any) -> None:
    fresh = make_daemon()
    complete(fresh, "train", [0.5] * 25)  # exactly a page
    with signed_in(browser, fresh) as (page, console):
        rows, older = page.locator("#rollouts tbody tr"), page.locator("#rollouts-older")
        expect(rows).to_have_count(25, timeout=WAIT_MS)
        expect(older).to_be_disabled()
        [newest] = complete(fresh, "train", [0.5])
        expect(rows.first).to_have_attribute("data-rollout-id", newest, timeout=WAIT_MS)
        expect(older).to_be_enabled()
        older.click()
        expect(rows).to_have_count(1)
        expect(older).to_be_disabled()
    assert console.errors == []


def test_a_trace_longer_than_the_daemon_sends_is_said_to_be_cut(daemon: Daemon, open_page: Any) -> None:
    trace = [
        {"name": f"step {i}", "context": {"span_id": hex(i)}, "start_time": i, "end_time": i + 1}
        for i in range(600)
    ]
    [rollout_id] = complete(daemon, "train", [0.5], trace=trace)
    page = open_page()
    page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button").click(timeout=WAIT_MS)
    expect(page.locator("#detail h3", has_text="Spans")).to_have_text(
        "Spans (first 500 of 600)", timeout=WAIT_MS
    )
    expect(page.locator("#detail table.waterfall tbody tr")).to_have_count(500)


def test_status_colours_read_at_wcag_aa_on_panels_and_buttons(daemon: Daemon, open_page: Any) -> None:
    page = open_page(color_scheme="light")
    expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
    colours = page.evaluate(
        """() => {
            const colour = (tag, className, property) => {
                const element = document.createElement(tag);
                element.className = className;
                document.querySelector("#board").append(element);
                const value = getComputedStyle(element)[property];
                element.remove();
                return value;
            };
            const statuses = ["completed", "succeeded", "cancelled", "claimed", "running", "failed", "timeout"];
            return {
                panel: colour("section", "panel", "backgroundColor"),
                button: colour("button", "task-action", "backgroundColor"),
                text: statuses.map((name) => colour("span", `status ${name}`, "color")),
            };
        }"""
    )
    for text in colours["text"]:
        for background in (colours["panel"], colours["button"]):
            assert _contrast(text, background) >= 4.5, (text, background)


def _contrast(first: str, second: str) -> float:
    """WCAG's contrast ratio of two CSS `rgb(...)` colours."""

    def luminance(colour: str) -> float:
        channels = [int(part) / 255 for part in re.findall(r"\d+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _fits(element: Any) -> bool:
    """Whether `element` is within the window's width, and its content within its own."""
    fits: bool = element.evaluate(
        "e => e.scrollWidth <= e.clientWidth && e.getBoundingClientRect().left >= 0"
        " && e.getBoundingClientRect().right <= document.documentElement.clientWidth"
    )
    return fits


def test_odd_rollout_ids_show_as_buttons_one_can_read_and_press(make_daemon: Any, browser: Any) -> None:
    """A blank id shows a placeholder; a long one is cut between characters, not inside an
    emoji; each part is isolated (in a <bdi>) so a right-to-left override stays inside."""
    emoji = "\U0001f642" * 30  # 30 characters, 60 UTF-16 units
    override = "\u202e" + "x" * 30
    fresh = make_daemon()
    for rollout_id in ("", "   ", emoji, override):
        fresh.report(rollout_id, final_reward=0.5)  # unsolicited: no task is needed
    shown = {
        "": "(empty id)",
        "   ": "(blank id)",
        emoji: "\U0001f642" * 17 + "…" + "\U0001f642" * 4,
        override: override[:17] + "…xxxx",
    }
    with signed_in(browser, fresh) as (page, console):
        for rollout_id, text in shown.items():
            button = page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button")
            expect(button).to_have_text(text, timeout=WAIT_MS)
            box = button.bounding_box()
            assert box is not None and box["width"] > 20 and box["height"] > 5
        # the override reverses its own part only: the last four characters still come after
        overridden = page.locator(f"#rollouts tr[data-rollout-id='{override}'] button")
        assert _in_order(overridden.locator("bdi bdi").first, overridden.locator("bdi bdi").last)
        page.locator("#rollouts tr[data-rollout-id=''] button").click()
        expect(page.locator("#detail-title")).to_have_text("(empty id)")
        expect(page.locator("#detail dl.facts")).to_contain_text("unsolicited", timeout=WAIT_MS)
    assert console.errors == []


def test_every_rollout_id_opens_its_own_rollout_dots_and_the_empty_one_too(
    make_daemon: Any, browser: Any
) -> None:
    """A browser resolves the path segments `.` and `..` (even written `%2E`): an id in the
    path would open another rollout, or the summary, in place of its own."""
    rewards = {".": "0.100", "..": "0.200", "": "0.300", "ro-plain": "0.400"}
    fresh = make_daemon()
    for rollout_id, reward in rewards.items():
        fresh.report(rollout_id, final_reward=float(reward))  # unsolicited: no task is needed
    with signed_in(browser, fresh) as (page, console):
        dialog = page.locator("#detail")
        for rollout_id, reward in rewards.items():
            page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] button").click(timeout=WAIT_MS)
            expect(dialog.locator("dl.facts dd").nth(2)).to_have_text(reward, timeout=WAIT_MS)  # its reward
            expect(dialog.locator("dl.facts dd").first).to_have_text("unsolicited")
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
    assert console.errors == []


def _in_order(first: Any, second: Any) -> bool:
    """Whether `second` is laid out to the right of `first` (on the same line)."""
    left, right = first.bounding_box(), second.bounding_box()
    assert left is not None and right is not None
    return bool(left["x"] + left["width"] <= right["x"] + 0.5)


def _selected(element: Any) -> str:
    """What a copy of `element` holds: the page's selection of its contents, as text."""
    text: str = element.evaluate(
        """element => {
            const range = document.createRange();
            range.selectNodeContents(element);
            getSelection().removeAllRanges();
            getSelection().addRange(range);
            return getSelection().toString();
        }"""
    )
    return text


def test_a_copied_id_is_the_id_itself_with_no_character_added(make_daemon: Any, browser: Any) -> None:
    """Ids are isolated by markup: characters inserted around them would be copied too, and
    `agl tasks show` would find no such task."""
    fresh = make_daemon("--max-attempts", "1")
    rollout_id = "ro-97ef5d72e4d0"  # as the store API names them: short enough to show whole
    fresh.report(rollout_id, final_reward=0.5)
    fresh.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}]}).raise_for_status()
    [handed] = fresh.post("/v1/agl/queues/rollouts/dequeue", json={"worker_id": "runner-1"}).json()
    failed = handed["rollout_id"]
    fresh.fail_attempt(failed)
    with signed_in(browser, fresh) as (page, console):
        cell = page.locator(f"#rollouts tr[data-rollout-id='{rollout_id}'] td").nth(1)
        expect(cell).to_have_text(rollout_id, timeout=WAIT_MS)
        assert _selected(cell) == rollout_id
        row = page.locator(f"#failures tr[data-rollout-id='{failed}']")
        expect(row.locator(".history li")).to_have_text("#1 failed on runner-1", timeout=WAIT_MS)
        assert _selected(row.locator("td").first) == failed
        assert _selected(row.locator(".history li")) == "#1 failed on runner-1"
    assert console.errors == []


def _box_of(element: Any, text: str) -> dict[str, float]:
    """Where the first `text` in `element`'s text (within one of its text nodes) is laid out."""
    box: dict[str, float] = element.evaluate(
        """(element, text) => {
            const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                const at = node.data.indexOf(text);
                if (at < 0) continue;
                const range = document.createRange();
                range.setStart(node, at);
                range.setEnd(node, at + text.length);
                const { x, width } = range.getBoundingClientRect();
                return { x, width };
            }
            throw new Error(`no ${text} in ${element.textContent}`);
        }""",
        text,
    )
    return box


def _before(element: Any, first: str, second: str) -> bool:
    """Whether `first` is laid out left of `second` in `element` (on one line)."""
    left, right = _box_of(element, first), _box_of(element, second)
    return left["x"] + left["width"] <= right["x"] + 0.5


def test_a_right_to_left_override_in_a_bundle_id_or_a_resource_name_reverses_nothing_around_it(
    make_daemon: Any, browser: Any
) -> None:
    fresh = make_daemon()
    llm = {"resource_type": "llm", "endpoint": "http://llm", "model": "m"}
    fresh.publish({"k\u202eRTL": llm}, "\u202eRTL")
    with signed_in(browser, fresh) as (page, console):
        cells = page.locator("#resources tbody tr").first.locator("td")
        expect(cells.first).to_contain_text("(latest)", timeout=WAIT_MS)
        assert _before(cells.first, "RTL", "(latest)")
        assert _before(cells.nth(3), "RTL", "llm")
        assert _selected(cells.first) == "\u202eRTL (latest)"
    assert console.errors == []


def test_a_failed_task_shows_with_its_attempts(make_daemon: Any, browser: Any) -> None:
    """With a claim timeout and an attempt limit, a task nobody reports fails; the page
    lists it with each timed-out attempt."""
    short = make_daemon("--task-timeout", "0.2", "--max-attempts", "2")
    [rollout_id] = short.queue("lost", mode="train")
    for _ in range(2):  # the task comes back once its claim times out
        wait_until(lambda: short.claim() is not None, "the task to be handed out", 10)
    with signed_in(browser, short) as (page, console):
        row = page.locator(f"#failures tr[data-rollout-id='{rollout_id}']")
        expect(row.locator("td").nth(1)).to_contain_text("failed", timeout=WAIT_MS)
        expect(row.locator(".history li")).to_have_count(2)
        expect(row.locator(".history")).to_contain_text("#1 timeout")
    assert console.errors == []


def failed_once(make_daemon: Any) -> tuple[Daemon, str]:
    """A daemon whose one task failed: its only claim ran out."""
    short = make_daemon("--task-timeout", "0.2", "--max-attempts", "1")
    [rollout_id] = short.queue("lost")
    wait_until(lambda: short.claim() is not None, "the task to be handed out", 10)
    return short, rollout_id


def status_of(daemon: Daemon, rollout_id: str) -> str:
    status: str = daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"]
    return status


def test_a_failed_task_is_retried_from_the_page_which_says_why_if_it_cannot_be(
    make_daemon: Any, browser: Any
) -> None:
    short, rollout_id = failed_once(make_daemon)
    with signed_in(browser, short) as (page, console):
        row = page.locator(f"#failures tr[data-rollout-id='{rollout_id}']")
        retry = row.get_by_role("button", name=f"Retry {rollout_id}")
        expect(retry).to_be_visible(timeout=WAIT_MS)
        refusal = f"Task '{rollout_id}' is queued and cannot be retried: only failed or cancelled tasks can."
        page.route("**/v1/tasks/retry", lambda route: route.fulfill(status=409, json={"detail": refusal}))
        retry.click()  # as if someone had retried it first
        problem = page.locator("#problem")
        expect(problem).to_contain_text(refusal)
        expect(problem).to_contain_text("The dashboard could not retry")
        _refreshed(page, f"#failures tr[data-rollout-id='{rollout_id}']")
        expect(problem).to_contain_text(refusal)  # a refresh does not take it away unread
        problem.get_by_role("button", name="Dismiss").click()
        expect(problem).to_be_hidden()
        retry.click()
        expect(problem).to_contain_text(refusal)
        page.unroute("**/v1/tasks/retry")
        retry.click()  # the problem is hidden as the click is taken, before the retry is made
        wait_until(
            lambda: status_of(short, rollout_id) == "queued", "the page to retry the task", WAIT_MS / 1000
        )
        expect(page.locator("#problem")).to_be_hidden()
    assert [error for error in console.errors if "409" not in error] == []


def test_the_keyboard_keeps_its_place_when_the_panels_refresh_and_when_a_dialog_closes(
    make_daemon: Any, browser: Any
) -> None:
    short, rollout_id = failed_once(make_daemon)
    with signed_in(browser, short) as (page, console):
        row = f"#failures tr[data-rollout-id='{rollout_id}']"
        retry = page.locator(row).get_by_role("button", name=f"Retry {rollout_id}")
        retry.focus(timeout=WAIT_MS)
        _refreshed(page, row)
        expect(retry).to_be_focused()  # the new row's: the locator finds it again
        show = page.locator(row).get_by_role("button", name=f"Show rollout {rollout_id}")
        show.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#detail dl.facts")).to_contain_text("failed", timeout=WAIT_MS)
        _refreshed(page, row)  # behind the dialog
        page.keyboard.press("Escape")
        expect(page.locator("#detail")).to_be_hidden()
        expect(show).to_be_focused()
    assert console.errors == []


def _refreshed(page: Any, row: str) -> None:
    """Have the page refresh its lower panels now (as it does every few seconds, and when
    the tab shows again), and wait until `row` has been drawn anew."""
    page.locator(row).evaluate("row => { row.dataset.old = 'yes' }")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_function(
        "row => { const shown = document.querySelector(row); return shown && !shown.dataset.old }",
        arg=row,
        timeout=WAIT_MS,
    )


def test_a_task_handed_out_again_is_cancelled_from_the_page_once_you_say_yes(
    make_daemon: Any, browser: Any
) -> None:
    short = make_daemon("--task-timeout", "0.2")
    rollout_id, done = short.queue("slow", "done at last")
    for _ in range(4):  # their first claims run out: each is handed out again
        wait_until(lambda: short.claim() is not None, "a task to be handed out", 10)
    short.report(done, final_reward=1.0)
    with signed_in(browser, short) as (page, console):
        completed = page.locator(f"#failures tr[data-rollout-id='{done}']")
        expect(completed).to_contain_text("completed", timeout=WAIT_MS)
        expect(completed.locator("button.task-action")).to_have_count(0)  # nothing to do with it
        row = page.locator(f"#failures tr[data-rollout-id='{rollout_id}']")
        cancel = row.get_by_role("button", name=f"Cancel {rollout_id}")
        expect(cancel).to_be_visible(timeout=WAIT_MS)
        asked: list[str] = []

        def answer(dialog: Any, yes: bool) -> None:
            asked.append(dialog.message)
            if yes:
                dialog.accept()
            else:
                dialog.dismiss()

        page.once("dialog", lambda dialog: answer(dialog, yes=False))
        cancel.click()
        assert asked == [
            f"Cancel \u2068{rollout_id}\u2069? It is not handed out again (a result that still comes is kept)."
        ]
        assert short.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] != "cancelled"
        page.once("dialog", lambda dialog: answer(dialog, yes=True))
        cancel.click()
        expect(row.get_by_role("button", name=f"Retry {rollout_id}")).to_be_visible(timeout=WAIT_MS)
        assert short.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "cancelled"
    assert console.errors == []


def test_a_result_deleted_by_the_retention_setting_is_said_to_be_so(make_daemon: Any, browser: Any) -> None:
    """A task that needed two attempts stays among the retried ones after its result is
    deleted; its detail says the result is gone, not that it is yet to come."""
    short = make_daemon("--task-timeout", "0.2", "--rollout-retention", "0.2")
    [rollout_id] = short.queue("retried", mode="train")
    for _ in range(2):  # the task comes back once its claim times out
        wait_until(lambda: short.claim() is not None, "the task to be handed out", 10)
    short.report(rollout_id, final_reward=1.0)
    wait_until(lambda: short.metric("agl_rollouts_pruned_total") == 1, "the result to be deleted", 30)
    with signed_in(browser, short) as (page, console):
        page.locator(f"#failures tr[data-rollout-id='{rollout_id}'] button").click(timeout=WAIT_MS)
        facts = page.locator("#detail dl.facts")
        expect(facts).to_contain_text("completed", timeout=WAIT_MS)
        expect(facts).to_contain_text("deleted since (retention)")
    assert console.errors == []


def test_a_wrong_token_is_refused_in_one_clear_message_and_shows_no_data(
    daemon: Daemon, open_page: Any
) -> None:
    complete(daemon, "train", [0.4])
    page = open_page("token=not-the-token", clean=False)
    expect(page.locator("#login-reason")).to_contain_text("refused this token", timeout=WAIT_MS)
    expect(page.locator("#board")).to_be_hidden()
    assert page.locator("#rollouts tbody tr").count() == 0
    assert page.locator("#count-completed").inner_text() == "\u2013"  # the dash shown before any count
    assert page.evaluate("sessionStorage.getItem('agl-token')") is None

    page.fill("#token", daemon.token)  # the form signs in with the right one
    page.press("#token", "Enter")
    expect(page.locator("#count-completed")).to_have_text(counted(daemon, "completed"), timeout=WAIT_MS)


def test_a_token_no_header_can_carry_is_refused_in_one_sentence_and_not_kept(
    daemon: Daemon, open_page: Any
) -> None:
    """Curly quotes pasted around the token: fetch() cannot send it (a character past
    Latin-1), so it is refused as a wrong one is, with the field to paste the right one."""
    unsendable = (
        "This token holds a character no token has (a curly quote, perhaps):"
        " paste the token again as it is in its file."
    )
    page = open_page("token=%E2%80%9Cnot-the-token%E2%80%9D")
    reason = page.locator("#login-reason")
    expect(reason).to_have_text(unsendable, timeout=WAIT_MS)
    expect(page.locator("#token")).to_be_visible()
    expect(page.locator("#board")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('agl-token')") is None

    reason.evaluate("reason => { reason.textContent = '' }")
    page.fill("#token", f"\u201c{daemon.token}\u201d")  # the field refuses it the same
    page.press("#token", "Enter")
    expect(reason).to_have_text(unsendable)
    assert page.evaluate("sessionStorage.getItem('agl-token')") is None

    page.fill("#token", daemon.token)
    page.press("#token", "Enter")
    expect(page.locator("#count-completed")).to_have_text(counted(daemon, "completed"), timeout=WAIT_MS)


def test_screenshots_light_and_dark(daemon: Daemon, open_page: Any) -> None:
    """The pictures to look at (and the README's): a run with three modes, a published
    bundle, a worker of the store API and a cancelled task."""
    rewards = [round(0.2 + 0.6 * i / 15 + (0.08 if i % 3 else -0.05), 3) for i in range(16)]
    complete(daemon, "train", rewards)
    complete(daemon, "val", [r - 0.1 for r in rewards[::2]])
    llm = {"resource_type": "llm", "endpoint": "http://llm:8000/v1", "model": "qwen2.5-7b", "api_key": "sk-x"}
    daemon.publish({"main_llm": llm})
    fetch(
        "POST",
        daemon.url + "/v1/agl/queues/rollouts/enqueue",
        json={"rollouts": [{"input": 1, "mode": "train"}]},
    )
    fetch("POST", daemon.url + "/v1/agl/queues/rollouts/dequeue", json={"worker_id": "runner-0"})
    fetch("POST", daemon.url + "/v1/agl/workers/runner-0", json={"heartbeat_stats": {"gpu": 0}})
    [cancelled] = daemon.queue("never mind")
    daemon.api("POST", f"/v1/tasks/{cancelled}/cancel").raise_for_status()
    for scheme in ("light", "dark"):
        page = open_page(color_scheme=scheme)
        expect(page.locator("#count-cancelled")).to_have_text(counted(daemon, "cancelled"), timeout=WAIT_MS)
        expect(page.locator("#workers tbody tr")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator("#resources tbody td").first).to_contain_text("(latest)")
        expect(page.locator("#chart path.average-train")).to_have_attribute("d", _drawn(), timeout=WAIT_MS)
        page.screenshot(path=str(_artifact(f"dashboard-{scheme}.png")), full_page=True)


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
