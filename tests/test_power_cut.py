"""A power cut, not only a crash: what agl answered is on the disk, not in the page cache.

`kill -9` loses no write the kernel has taken; a power cut loses every one that was not
synced. Here the state directory is on an ext4 file system of its own (a loop device),
shut down as a power cut leaves it (`EXT4_IOC_SHUTDOWN` without flushing its journal):
mounted again, it holds only what was synced. Needs root, losetup and mkfs.ext4."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import Daemon, fetch

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
NOLOGFLUSH = 2  # EXT4_GOING_FLAGS_NOLOGFLUSH: what was not synced is lost


@dataclass
class Disk:
    device: str
    mount: Path

    def cut(self) -> None:
        """The power goes: from now on every read and write fails, nothing more is kept."""
        fd = os.open(self.mount, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", NOLOGFLUSH))
        finally:
            os.close(fd)

    def power_on(self) -> None:
        """Mounted again: what it holds is what was synced before the cut."""
        subprocess.run(["umount", str(self.mount)], check=True)
        subprocess.run(["mount", self.device, str(self.mount)], check=True)


def _ran(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0 or not (shutil.which("losetup") and shutil.which("mkfs.ext4")):
        pytest.skip("a disk of its own needs root, losetup and mkfs.ext4")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(64 << 20)
    attached = _ran("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"no loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        made = _ran("mkfs.ext4", "-q", "-F", device)
        mounted = _ran("mount", device, str(mount)) if made.returncode == 0 else made
        if mounted.returncode != 0:
            pytest.skip(f"the disk cannot be made or mounted: {mounted.stderr.strip()}")
        yield Disk(device, mount)
    finally:
        _ran("umount", str(mount))
        _ran("losetup", "--detach", device)


def test_a_power_cut_loses_nothing_answered_and_keeps_the_token(
    disk: Disk,
    make_daemon: Callable[..., Daemon],  # in this order: the daemon goes before its disk
) -> None:
    daemon = make_daemon(state_dir=disk.mount)  # its log beside the disk, where it can be read
    token = daemon.token  # made at the first start: clients elsewhere hold it from now on
    reported, cancelled, queued = daemon.queue("reported", "cancelled", "queued")
    assert daemon.publish(
        {"prompt": {"resource_type": "prompt_template", "template": "{q}", "engine": "f-string"}}
    )
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == reported
    daemon.report(reported, final_reward=0.5)
    assert daemon.api("POST", f"/v1/tasks/{cancelled}/cancel").status_code == 200

    disk.cut()
    after = {"tasks": [{"input": "after the cut"}]}  # with the token kept: its file cannot be read now
    refused = fetch(
        "POST", daemon.url + "/v1/tasks", json=after, headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 503, refused.text
    code = daemon.terminate()
    assert "Traceback" not in daemon.log_path.read_text(), daemon.log_path.read_text()
    assert code == 0  # the stop it was asked for, its disk gone
    disk.power_on()

    assert (disk.mount / "token").read_text().strip() == token
    daemon.start()
    tasks = {task["rollout_id"]: task["status"] for task in daemon.api("GET", "/v1/tasks").json()["tasks"]}
    assert tasks == {reported: "completed", cancelled: "cancelled", queued: "queued"}
    assert [rollout["final_reward"] for rollout in daemon.rollouts()] == [0.5]
    assert daemon.api("GET", "/v1/resources/latest").json()["resources"]["prompt"]["template"] == "{q}"
