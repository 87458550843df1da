"""Web pages of other sites cannot drive the daemon through the user's browser, and the
programs that speak to it are served as before (agl_cli/server/browsers.py).

The refusals themselves, each with its sentence and the store unchanged, are rows of
tests/test_bad_input.py; here, what they must not break, and a real page in Chromium.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from daemon import Daemon, connect, fetch
from test_bad_input import REBOUND

from agl_cli.server.legacy import NO_RESOURCES

LLM = {"resource_type": "llm", "endpoint": "http://127.0.0.1:9/v1", "model": "tiny"}


def report(daemon: Daemon, rollout_id: str, headers: dict[str, str]) -> httpx.Response:
    body = b'{"rollout_id": "%s", "final_reward": 0.5}' % rollout_id.encode()
    return fetch("POST", daemon.url + "/rollout", content=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},  # aiohttp's and requests' `json=`
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "application/vnd.agl+json"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"},  # the dashboard's own page
        {"Content-Type": "application/json", "Sec-Fetch-Site": "none"},  # typed in by the user
        {"Content-Type": "application/json", "User-Agent": "Python/3.11 aiohttp/3.9.5"},  # 0.3.0's client
        # the dashboard's own page behind nginx, which forwards `Host: 127.0.0.1:8000`
        {
            "Content-Type": "application/json",
            "Sec-Fetch-Site": "same-origin",
            "Origin": "https://agl.example.com",
        },
    ],
    ids=[
        "json",
        "json-charset",
        "plus-json",
        "same-origin",
        "user-initiated",
        "aiohttp",
        "own-page-behind-a-proxy",
    ],
)
def test_reports_that_programs_and_the_own_page_send_are_stored(
    daemon: Daemon, headers: dict[str, str]
) -> None:
    [rollout_id] = daemon.queue({"x": 1})
    assert daemon.claim() is not None
    answer = report(daemon, rollout_id, headers)
    assert answer.status_code == 200, answer.text
    assert [r["rollout_id"] for r in daemon.rollouts()] == [rollout_id]


def test_a_claim_another_site_sends_leaves_the_task_queued_for_a_worker(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue({"x": 1})
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert fetch("GET", daemon.url + "/task", headers=image).status_code == 403
    long_poll = fetch("GET", daemon.url + "/task", params={"wait": "1"}, headers=image)
    assert long_poll.status_code == 403
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["num_claims"] == 0
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == rollout_id


@pytest.mark.parametrize(
    "page",
    [
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"},  # another port of this host
        {
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"
        },  # sends no Sec-Fetch-Site (http://0.0.0.0, a LAN name)
    ],
    ids=["another-port", "no-fetch-metadata"],
)
def test_a_claim_or_report_a_page_of_another_origin_sends_changes_nothing(
    daemon: Daemon, page: dict[str, str]
) -> None:
    [rollout_id] = daemon.queue({"x": 1})
    assert fetch("GET", daemon.url + "/task", headers=page).status_code == 403
    assert report(daemon, rollout_id, {"Content-Type": "application/json", **page}).status_code == 403
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["num_claims"] == 0
    typed_in = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Sec-Fetch-Site": "none"}  # by its user
    assert fetch("GET", daemon.url + "/task", headers=typed_in).json()["task"]["rollout_id"] == rollout_id


def test_a_link_from_another_site_opens_the_dashboard_page(daemon: Daemon) -> None:
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    page = fetch("GET", daemon.url + "/", headers=link)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_otlp_keeps_its_own_type_and_its_own_answer_to_another(daemon: Daemon) -> None:
    """Protobuf is not JSON, yet OTLP's route takes it; what it refuses, it refuses itself."""
    plain = fetch("POST", daemon.url + "/v1/traces", content=b"x", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 400 and plain.headers["content-type"] == "application/x-protobuf"


class _AnotherSite(http.server.BaseHTTPRequestHandler):
    page = b"<!doctype html><title>another site</title><a id='claim' href='{agl}/task'>a task</a>"

    def do_GET(self) -> None:
        body = self.page.replace(b"{agl}", self.server.agl_url.encode())  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def another_site(daemon: Daemon) -> Iterator[str]:
    """A page served from `localhost`, which is another site than agl's `127.0.0.1`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnotherSite)
    server.agl_url = daemon.url  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# What the page's script sends as any page may, without asking agl first: bodies typed
# `text/plain` by `fetch` itself, and an image whose address is `/task`.
SEND_WHAT_A_PAGE_MAY = """async (agl) => {
  const post = (path, body) => fetch(agl + path, {method: "POST", mode: "no-cors", body: JSON.stringify(body)});
  await post("/rollout", {rollout_id: "from-a-page", final_reward: 1});
  await post("/v1/agl/queues/rollouts/enqueue", {rollouts: [{input: "from a page"}]});
  await post("/v1/agl/resources", {llm: {resource_type: "llm", endpoint: "http://evil.test/v1", model: "m"}});
  await new Promise((done) => { const image = new Image(); image.onload = image.onerror = done; image.src = agl + "/task"; });
}"""


def refused_so_far(daemon: Daemon) -> float:
    """403s on agl's routes. Not on unknown paths: driven by Playwright before 1.50,
    Chromium also asks the page's own server (the daemon, after rebinding) for its icon,
    outside the page."""
    text = fetch("GET", daemon.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agl_http_request_duration_seconds_count{")
        and 'status="403"' in line
        and 'route="<unmatched>"' not in line
    )


def test_a_page_of_another_site_in_chromium_changes_nothing(daemon: Daemon, another_site: str) -> None:
    from chromium import launched  # skips this test alone where there is no browser

    [rollout_id] = daemon.queue({"x": 1})
    before = daemon.status()
    refused = refused_so_far(daemon)
    with launched() as browser:
        page = browser.new_page()
        page.goto(another_site)
        page.evaluate(SEND_WHAT_A_PAGE_MAY, daemon.url)
        page.click("#claim")  # the user follows a link to agl's /task
        page.wait_for_url(daemon.url + "/task")
        assert "(Sec-Fetch-Site: cross-site)" in page.content()  # the sentence of the 403
    assert refused_so_far(daemon) == refused + 5  # each arrived, and each was refused
    after = daemon.status()
    assert (after["tasks"], after["rollouts"], after["resources"]) == (
        before["tasks"],
        before["rollouts"],
        before["resources"],
    )
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["num_claims"] == 0
    assert fetch("GET", daemon.url + "/v1/agl/resources/latest").json() is None


class _AFormOfAnotherSite(_AnotherSite):
    """A form posting nothing to the daemon at 0.0.0.0, where browsers send no `Sec-Fetch-Site`."""

    page = (
        b"<!doctype html><title>another site</title><form method='POST' enctype='text/plain'"
        b" action='{agl}/v1/queue/pause'><button id='pause'>pause</button></form>"
    )


def test_a_form_of_another_site_cannot_pause_a_daemon_without_a_token_in_chromium(
    make_daemon: Callable[..., Daemon],
) -> None:
    from chromium import launched

    daemon = make_daemon("--no-auth")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AFormOfAnotherSite)
    server.agl_url = daemon.url.replace("127.0.0.1", "0.0.0.0")  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with launched() as browser:
            page = browser.new_page()
            page.goto(f"http://localhost:{server.server_address[1]}/")
            page.click("#pause")
            page.wait_for_url("**/v1/queue/pause")
            assert "of another origin sends (Origin: http://localhost:" in page.content()
    finally:
        server.shutdown()
        server.server_close()
    assert fetch("GET", daemon.url + "/v1/status").json()["paused"] is False  # no token to give


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "LOCALHOST",
        "localhost.:{port}",
        "127.0.0.2:{port}",
        "[::1]:{port}",
        "0.0.0.0:{port}",
    ],
)
def test_a_daemon_on_loopback_serves_every_loopback_name_it_is_addressed_by(
    shared_daemon: Daemon, host: str
) -> None:
    port = shared_daemon.url.rsplit(":", 1)[1]
    answer = fetch("GET", shared_daemon.url + "/resources/latest", headers={"Host": host.format(port=port)})
    assert (answer.status_code, answer.json()) == (404, {"detail": NO_RESOURCES})


def test_a_daemon_beyond_loopback_serves_any_name(make_daemon: Callable[..., Daemon]) -> None:
    """Its names are the network's: which of them reach it, agl cannot know."""
    daemon = make_daemon("--host", "0.0.0.0")
    answer = fetch(
        "GET", daemon.url.replace("0.0.0.0", "127.0.0.1") + "/health", headers={"Host": "agl.example:8000"}
    )
    assert answer.status_code == 200


def test_a_daemon_beyond_loopback_given_names_serves_only_those_and_addresses(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Names its workers reach it by: a page rebound to its address names its own."""
    daemon = make_daemon("--host", "0.0.0.0", "--allowed-host", "agl.internal")
    url = daemon.url.replace("0.0.0.0", "127.0.0.1")
    for host in (
        "agl.internal:8000",
        "AGL.internal",
        "agl.internal.",
        "10.1.2.3:8000",
        "[2001:db8::1]",
        "localhost",
    ):
        assert fetch("GET", url + "/health", headers={"Host": host}).status_code == 200, host
    [rollout_id] = daemon.queue("x")
    refused = fetch("GET", url + "/task", headers={"Host": "evil.test:8000"})
    assert (refused.status_code, refused.json()["detail"]) == (
        403,
        "This agl daemon answers only requests addressed to an IP address or a name given with --allowed-host,"
        " not to 'evil.test:8000'.",
    )
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["num_claims"] == 0


def test_a_daemon_on_loopback_serves_the_names_it_was_given_for_a_proxy(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A proxy on this machine that passes its public name on as `Host` (nginx with
    `proxy_set_header Host $host`)."""
    daemon = make_daemon("--allowed-host", "agl.example.com", "--allowed-host", "[2001:db8::1]")
    [rollout_id] = daemon.queue("x")
    with httpx.Client(base_url=daemon.url, headers={"Content-Type": "application/json"}) as client:
        for host in ("agl.example.com", "AGL.Example.com:443", "[2001:db8::1]:8443"):
            assert client.get("/health", headers={"Host": host}).status_code == 200
        proxied = {"Host": "agl.example.com"}
        claimed = client.get("/task", headers=proxied).json()["task"]
        assert claimed["rollout_id"] == rollout_id
        report = client.post(
            "/rollout", headers=proxied, json={"rollout_id": rollout_id, "final_reward": 1.0}
        )
        assert report.status_code == 200
        refused = client.get("/task", headers={"Host": "evil.test"})
    assert (refused.status_code, refused.json()["detail"]) == (403, REBOUND)
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "completed"


def raw_answer(daemon: Daemon, request: str) -> bytes:
    with connect(daemon.url) as sock:
        sock.sendall(request.replace("\n", "\r\n").encode())
        answer = b""
        while chunk := sock.recv(1 << 16):  # `Connection: close`: read to the end
            answer += chunk
    return answer


@pytest.mark.parametrize("hosts", [("evil.test", "127.0.0.1"), ("127.0.0.1", "evil.test")])
def test_a_header_given_twice_is_refused_if_either_of_its_values_is(
    daemon: Daemon, hosts: tuple[str, ...]
) -> None:
    """Whichever value the next reader takes, the guard has judged it."""
    [rollout_id] = daemon.queue("x")
    host_lines = "".join(f"Host: {host}\n" for host in hosts)
    claim = raw_answer(daemon, f"GET /task HTTP/1.1\n{host_lines}Connection: close\n\n")
    assert claim.startswith(b"HTTP/1.1 403 ") and b"not to 'evil.test'" in claim
    body = f'{{"rollout_id": "{rollout_id}", "final_reward": 1}}'
    types = (
        ("text/plain", "application/json") if hosts[0] == "evil.test" else ("application/json", "text/plain")
    )
    type_lines = "".join(f"Content-Type: {kind}\n" for kind in types)
    report = raw_answer(
        daemon,
        f"POST /rollout HTTP/1.1\nHost: 127.0.0.1\n{type_lines}Content-Length: {len(body)}\nConnection: close\n\n{body}",
    )
    assert report.startswith(b"HTTP/1.1 415 ") and b"not 'text/plain'" in report
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "queued"
    assert daemon.rollouts() == []


# A page of a name its owner has made resolve to 127.0.0.1 (DNS rebinding) shares agl's
# origin: it reads what it asks for. Chromium's resolver maps the name; the page itself is
# handed to the browser by Playwright, as the name's first address would have served it.
# Chromium's own Local Network Access checks now stop a page of a public address from
# reaching loopback; a browser without such checks lets it through, as Chromium did
# before them: with them turned off, Chromium stands for such a browser.
REBINDING = ("--host-resolver-rules=MAP evil.test 127.0.0.1", "--disable-features=LocalNetworkAccessChecks")
READ_WHAT_A_REBOUND_PAGE_MAY = """async () => {
  const latest = await fetch("/resources/latest");
  const claim = await fetch("/task");
  return [latest.status, await latest.text(), claim.status];
}"""


def what_a_rebound_page_reads(daemon: Daemon) -> tuple[int, str, int]:
    """In Chromium, a page of `evil.test`, made to resolve to 127.0.0.1, asks the daemon
    for the latest resources (an API key among them) and a task: the two statuses, and the
    resources' body. The task stays unclaimed."""
    from chromium import launched  # skips the test alone where there is no browser

    daemon.publish({"main_llm": {**LLM, "api_key": "sk-only-for-workers"}})
    [rollout_id] = daemon.queue({"x": 1})
    rebound = f"http://evil.test:{daemon.url.rsplit(':', 1)[1]}"
    with launched(*REBINDING) as browser:
        page = browser.new_page()
        page.route(rebound + "/", lambda route: route.fulfill(body="<!doctype html><title>rebound</title>"))
        page.goto(rebound + "/")
        latest_status, latest_body, claim_status = page.evaluate(READ_WHAT_A_REBOUND_PAGE_MAY)
    assert "sk-only-for-workers" not in latest_body
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["num_claims"] == 0
    return latest_status, latest_body, claim_status


def test_a_page_whose_name_is_rebound_to_loopback_reads_nothing_in_chromium(daemon: Daemon) -> None:
    refused = refused_so_far(daemon)
    latest_status, latest_body, claim_status = what_a_rebound_page_reads(daemon)
    assert (latest_status, claim_status) == (403, 403) and "evil.test" in latest_body
    assert refused_so_far(daemon) == refused + 2


def test_a_page_rebound_to_a_daemon_beyond_loopback_reads_nothing_in_chromium(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Beyond loopback agl answers any name, so the rebound page's requests are its own
    origin's; over plain http to a name not localhost, the browser marks them with no
    Sec-Fetch-Site: its User-Agent tells it, on the routes no page of agl's calls."""
    latest_status, _, claim_status = what_a_rebound_page_reads(make_daemon("--host", "0.0.0.0"))
    assert (latest_status, claim_status) == (403, 403)
