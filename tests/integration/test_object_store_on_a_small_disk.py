"""A ``file://`` object store on a disk that really fills up and really turns read-only: a small
tmpfs, mounted in a mount namespace of the child process alone (``unshare``: a user namespace
where the kernel allows one, so no root is needed; nothing is mounted on the host). The child,
small_disk_child.py, runs the store and reports what it saw."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamlib.io import classify

pytestmark = pytest.mark.once  # the object store's errors, not the codec

CHILD = Path(__file__).with_name("small_disk_child.py")
MOUNT_AND_RUN = 'mount -t tmpfs -o size=1m streamlib-test "$1" && shift && exec "$@"'


@functools.cache
def namespace_command() -> list[str] | None:
    """An ``unshare`` command line in which this machine lets a process mount a tmpfs of its
    own (first a user namespace, then, for root, a mount namespace alone); None if none."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("mount") is None:
        return None
    for flags in (["--user", "--map-root-user", "--mount"], ["--mount"]):
        command = [unshare, *flags, "sh", "-c", MOUNT_AND_RUN, "sh"]
        probe = subprocess.run([*command, "/tmp", "true"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return command
    return None


def test_a_full_or_read_only_disk_is_storage_unavailable_and_loses_nothing(
        tmp_path: Path) -> None:
    command = namespace_command()
    if command is None:
        pytest.skip("this machine lets no process mount a tmpfs of its own (unshare)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run([*command, str(mount), sys.executable, str(CHILD), str(mount),
                           str(tmp_path / "data")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    full = seen["full"]
    assert full["kind"] == "StorageUnavailable" and full["errno"] == errno.ENOSPC, full
    assert "errno=`ENOSPC`" in full["message"] and "op=`put`" in full["message"]
    assert f"key=`file://{mount}/objects/" in full["message"]
    assert seen["readable_while_full"] is True
    assert seen["left_in_objects"] == []  # the failed put's temporary file is gone
    assert seen["after_room"] == {"kind": None}  # the data was kept: uploaded once room came

    read_only = seen["read_only"]
    assert read_only["kind"] == "StorageUnavailable" and read_only["errno"] == errno.EROFS
    assert "errno=`EROFS`" in read_only["message"]
    refused = seen["open_read_only"]
    assert refused is not None and refused["field"] == "objects_url"
    assert "read-only mount" in refused["message"]

    assert seen["values_at_the_end"] == [200_000, 200_000]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO],
                         ids=errno.errorcode.get)
def test_what_a_local_storage_failure_is(code: int) -> None:
    """The four errnos of a disk that cannot store data now are "unavailable" (raised at once
    as StorageUnavailable); an EIO that a dropped connection led to stays transient."""
    assert classify(OSError(code, os.strerror(code))) == "unavailable"
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
        except ConnectionResetError as reset:
            raise OSError(code, os.strerror(code)) from reset
    except OSError as error:  # only EIO may come from the network
        assert classify(error) == ("transient" if code == errno.EIO else "unavailable")
