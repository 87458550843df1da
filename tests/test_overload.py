"""More requests than the daemon takes at once: the rest are answered 503 with
`Retry-After` at once, what was accepted is answered in full, and probes always pass."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Callable

import httpx
from daemon import Daemon, wait_until


def test_beyond_max_requests_a_request_is_a_503_with_retry_after_and_the_accepted_ones_are_answered(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--max-requests", "2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        polls = [
            pool.submit(httpx.get, f"{daemon.url}/task", params={"wait": 3}, timeout=30) for _ in range(2)
        ]
        wait_until(lambda: daemon.requests_in_flight() == 2, "both long polls to be waiting")
        refused = httpx.get(f"{daemon.url}/task", timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["detail"].startswith("agl is serving as many requests as it takes at once (2)")
        assert daemon.get("/health").status_code == 200  # probes always pass
        answers = [poll.result(timeout=30) for poll in polls]
    assert [a.json() for a in answers] == [{"is_available": False, "task": None}] * 2
    wait_until(lambda: daemon.requests_in_flight() == 0, "the long polls to end")
    assert httpx.get(f"{daemon.url}/task", timeout=10).status_code == 200
    assert re.search(r"^agl_requests_turned_away_total 1\.0$", daemon.get("/metrics").text, re.M)
