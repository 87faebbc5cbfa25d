"""The object-store contract (streamlib.testing.objects) on every store streamlib ships for:
a local directory, memory, and S3 through s3fs on moto and on SeaweedFS; and on a store
without create-only writes, whose create tests are skipped."""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from streamlib.io import ObjectStore, open_filesystem
from streamlib.testing.faults import FaultyFileSystem
from streamlib.testing.objects import ObjectStoreContract
from streamlib.testing.s3 import S3Bucket

# Object-store calls: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

S3_MIN_PART = 5 * 1024 * 1024
"""The smallest part S3 takes in a multipart upload (all but the last)."""


class TestObjectsOnFiles(ObjectStoreContract):
    def open_store(self, location: Path) -> ObjectStore:
        return ObjectStore.from_url(f"file://{location}")

    def remove_store(self, store: ObjectStore) -> None:
        pass  # tmp_path goes with the test


class TestObjectsWithoutCreate(ObjectStoreContract):
    """A store with no create-only write: a local directory seen through a wrapper, which
    ObjectStore does not know to be local (what any unknown fsspec store looks like)."""

    can_create = False

    def open_store(self, location: Path) -> ObjectStore:
        return ObjectStore(FaultyFileSystem(LocalFileSystem(auto_mkdir=True)), str(location))

    def remove_store(self, store: ObjectStore) -> None:
        pass  # tmp_path goes with the test


class TestObjectsInMemory(ObjectStoreContract):
    def open_store(self, location: Path) -> ObjectStore:
        return ObjectStore.from_url(f"memory://objects-{uuid.uuid4().hex}")

    def remove_store(self, store: ObjectStore) -> None:
        fs, root = open_filesystem(store.url)  # memory:// is one filesystem for the process
        with contextlib.suppress(FileNotFoundError):
            fs.rm(root, recursive=True)


class S3Contract(ObjectStoreContract):
    """The contract on a fresh bucket of one of the session's servers, through s3fs."""

    part_bytes = S3_MIN_PART
    server = ""
    """The name of the bucket fixture's server: ``moto`` or ``seaweedfs``."""

    @pytest.fixture(autouse=True)
    def _bucket(self, request: pytest.FixtureRequest) -> None:
        self.bucket: S3Bucket = request.getfixturevalue(f"{self.server}_bucket")

    def open_store(self, location: Path) -> ObjectStore:
        return self.bucket.store("contract")

    def remove_store(self, store: ObjectStore) -> None:
        pass  # the bucket fixture deletes the bucket

    def parts_of(self, store: ObjectStore, key: str) -> int | None:
        """The part count S3 puts in a multipart object's ETag (``"<md5>-<parts>"``)."""
        etag = str(self.bucket.fs.info(f"{store.root}/{key}").get("ETag", ""))
        found = re.fullmatch(r'"?[0-9a-fA-F]+-(\d+)"?', etag)
        return int(found.group(1)) if found else 1


class TestObjectsOnMoto(S3Contract):
    server = "moto"


class TestObjectsOnSeaweedFS(S3Contract):
    server = "seaweedfs"
    racers = 4  # it answers the losers of a create race one per second: 8 would take 4 s
