"""The child of the small-disk test: a store whose ``file://`` objects live on a small tmpfs
that really fills up, and then really turns read-only.

    python small_disk_child.py MOUNT DATA

``MOUNT`` is an empty tmpfs of its own (the parent mounted it, in a mount namespace of this
child's own); ``DATA`` is the store's directory (WAL and metadata) on an ordinary disk. The
child prints one JSON object of what it saw, and changes nothing outside ``MOUNT`` and ``DATA``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import streamlib
from streamlib.errors import ConfigError, StorageUnavailable


def fill(path: str) -> None:
    """Write zeros to ``path`` until the filesystem has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, bytes(64 * 1024))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    try:  # what the last big write left: a few bytes may still fit
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        while True:
            os.write(fd, bytes(512))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def flush_error(store: streamlib.StreamStore) -> dict[str, object]:
    try:
        store.flush()
    except StorageUnavailable as e:
        return {"kind": "StorageUnavailable", "errno": e.errno, "message": str(e)}
    except Exception as e:  # what the test must not see
        return {"kind": type(e).__name__, "errno": getattr(e, "errno", None), "message": str(e)}
    return {"kind": None}


def main() -> None:
    mount, data = sys.argv[1], sys.argv[2]
    objects = os.path.join(mount, "objects")
    seen: dict[str, object] = {}
    value = os.urandom(200_000)  # random: compression cannot make it fit
    options = {"objects_url": f"file://{objects}", "upload_interval_ms": 3_600_000}

    # A full disk: the upload fails as StorageUnavailable, the data stays readable.
    filler = os.path.join(mount, "filler")
    fill(filler)
    with streamlib.open(data, **options) as store:
        stream = store.create_stream("s")
        stream.append([value])
        seen["full"] = flush_error(store)
        seen["readable_while_full"] = [r.value for _, r in stream.fetch(0).records()] == [value]
        seen["left_in_objects"] = sorted(
            name for _, _, names in os.walk(objects) for name in names)
        os.unlink(filler)
        seen["after_room"] = flush_error(store)

    # A read-only mount: at open, a ConfigError; under an open store, StorageUnavailable.
    with streamlib.open(data, **options) as store:
        stream = store.open_stream("s")
        stream.append([value])
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
        seen["read_only"] = flush_error(store)
    try:
        streamlib.open(data, **options).close()
        seen["open_read_only"] = None
    except ConfigError as e:
        seen["open_read_only"] = {"field": e.field, "message": str(e)}
    subprocess.run(["mount", "-o", "remount,rw", mount], check=True)
    with streamlib.open(data, **options) as store:  # the WAL kept the append: uploaded now
        store.flush()
        seen["values_at_the_end"] = [len(r.value) for _, r in store.open_stream("s").fetch(
            0, max_bytes=1 << 30).records()]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
