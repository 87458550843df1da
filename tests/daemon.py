"""A real `agl serve` process for tests: started on an ephemeral port (forked from the
pre-fork server of `prefork.py` where it can be), killed for real."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import prefork

from agl_cli.server.logs import untimed

READY_LINE = re.compile(r"listening on (http://\S+)")

# httpx.get(), httpx.post() and the like build their TLS settings anew at every call, loading
# the certificate store: about 40 ms of CPU, and the suite makes thousands of calls, none over
# TLS. `fetch` shares one set; each call still opens and closes its own connection.
_TLS_SETTINGS = ssl.create_default_context()


def fetch(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.request(method, url, ...)`, without building TLS settings for it."""
    return httpx.request(method, url, verify=_TLS_SETTINGS, **kwargs)


class Daemon:
    """One daemon on one state directory; `kill()` then `start()` is a crash and a restart."""

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        open_files: int | None = None,
        open_files_hard: bool = False,
        under_nohup: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.args = list(args)
        self.open_files = open_files  # a soft limit on open files to start it with
        self.open_files_hard = open_files_hard  # and as the hard limit, which it cannot raise
        # started with SIGHUP ignored; else as from a terminal, whatever the suite's
        self.under_nohup = under_nohup
        self.env = env  # variables to add to the suite's environment
        self.proc: prefork.Process | None = None
        self.url = ""
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.state_dir.name}-daemon-{self.starts}.log"

    def said(self) -> list[str]:
        """The lines of this start's log, each without the time it begins with."""
        return [untimed(line) for line in self.log_path.read_text().splitlines()]

    def start(self, timeout: float = 20.0) -> Daemon:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY_LINE.search(self.log_path.read_text())
            if match:
                self.url = match.group(1)
                self._wait_ready(deadline)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"agl serve exited early: {self.log_path.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"agl serve did not start: {self.log_path.read_text()}")

    def spawn(self) -> None:
        """Start the process, without waiting for it to listen."""
        self.starts += 1
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # as agl makes it
        args = [
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            "warning",
            *self.args,
        ]
        open_files = None
        if self.open_files is not None:
            hard = self.open_files if self.open_files_hard else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            open_files = (self.open_files, hard)
        with self.log_path.open("wb") as log:
            self.proc = prefork.start(
                args,
                env={**os.environ, **(self.env or {})},
                stdin=0,  # the suite's own, as a daemon inherits it
                stdout=log.fileno(),
                stderr=log.fileno(),
                ignore_sighup=self.under_nohup,
                open_files=open_files,
            )

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if fetch("GET", self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError("agl serve never became ready")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit by itself; its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # talking to it -----------------------------------------------------------------------

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A management-API call with the daemon's token."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return fetch(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return fetch("GET", self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return fetch("POST", self.url + path, timeout=30, **kwargs)

    def queue(self, *inputs: Any, **fields: Any) -> list[str]:
        response = self.api("POST", "/v1/tasks", json={"tasks": [{"input": i, **fields} for i in inputs]})
        response.raise_for_status()
        ids: list[str] = response.json()["rollout_ids"]
        return ids

    def publish(self, resources: dict[str, Any], resources_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"resources": resources}
        if resources_id:
            body["resources_id"] = resources_id
        response = self.api("POST", "/v1/resources", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def rollouts(self) -> list[dict[str, Any]]:
        """Every kept rollout, oldest first, a page at a time (a page of big ones comes short)."""
        rollouts: list[dict[str, Any]] = []
        while True:
            since = rollouts[-1]["seq"] if rollouts else 0
            response = self.api("GET", "/v1/rollouts", params={"since": since, "limit": 10_000})
            response.raise_for_status()
            page = response.json()
            rollouts += page["rollouts"]
            if not page["rollouts"] or rollouts[-1]["seq"] >= page["last_seq"]:
                return rollouts

    def metric(self, name: str) -> float:
        """The value of one sample of the daemon's metrics (a name without labels)."""
        match = re.search(rf"^{re.escape(name)} (\S+)$", self.get("/metrics").text, re.M)
        assert match, f"{name} is not exported"
        return float(match.group(1))

    def requests_in_flight(self) -> int:
        """How many requests the daemon is serving now (long polls and streams included),
        from its metrics: the signal that a request has reached it and is waiting."""
        return int(self.metric("agl_requests_in_flight"))

    def status(self) -> dict[str, Any]:
        response = self.api("GET", "/v1/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def report(self, rollout_id: str, **fields: Any) -> None:
        """Post a rollout as a worker does."""
        self.post("/rollout", json={"rollout_id": rollout_id, **fields}).raise_for_status()

    def fail_attempt(self, rollout_id: str) -> None:
        """End a claimed task's latest attempt as failed, as a store-API runner does."""
        self.post(
            f"/v1/agl/rollouts/{rollout_id}/attempts/latest", json={"status": "failed"}
        ).raise_for_status()

    def claim(self) -> dict[str, Any] | None:
        body = self.get("/task").json()
        task: dict[str, Any] | None = body["task"]
        return task


def env_without_agl() -> dict[str, str]:
    """The environment minus agl's own variables, so tests never see the user's daemon."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}


def free_port() -> int:
    """A port nothing listens on now (for a daemon that must come back on the same one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connect(url: str) -> socket.socket:
    """A raw connection to a daemon, for what an HTTP client would not send."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Look at `condition` until it holds (it has no signal to wait on), failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
