"""The object-store contract suite: what streamlib needs of an :class:`~streamlib.io.ObjectStore`
on a given backend. Each backend's tests subclass :class:`ObjectStoreContract`.

A subclass provides :meth:`ObjectStoreContract.open_store` and declares what the store can do;
pytest then runs every test below against it::

    class TestMyStore(ObjectStoreContract):
        can_create = True          # what ObjectStore.can_create must say for it
        part_bytes = 5 * 1024**2   # the smallest multipart part it takes

        def open_store(self, location):
            return ObjectStore.from_url(f"myfs://bucket/{location.name}")

``location`` is a fresh path per test (a ``tmp_path`` subfolder, not created yet) that a local
store can live in and any other store can ignore; each test needs a fresh, empty store. A
backend that needs a server takes it in an ``autouse`` fixture of its own and keeps what it needs
on ``self`` (pytest makes one instance of the class per test).

What is checked is what the rest of streamlib relies on: a write reads back whole; a ranged GET
behaves as a slice (past the end: fewer bytes or none); a listing shows every completed write
and no completed delete, with sizes, under a plain string prefix; a create-only write lets
exactly one of several racing writers win and never replaces the object (skipped where the
store declares it cannot); a multipart upload reads back identical; a delete of several keys,
missing ones among them, succeeds; a missing key is a :class:`FileNotFoundError`.
"""

from __future__ import annotations

import contextlib
import errno
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamlib.errors import ConfigError
from streamlib.io import ObjectInfo, ObjectStore

JOIN_SECONDS = 60.0
"""How long a test waits for its own threads: a bound that only a hung store reaches."""


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes of every value 0–255 in a seeded order (no text, no runs that a store
    could compress or normalise)."""
    return random.Random(seed).randbytes(size)


def keys_of(infos: list[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


class ObjectStoreContract:
    """The tests every object-store backend passes. See the module docstring."""

    can_create: bool = True
    """Whether the store can create an object only if absent (:attr:`ObjectStore.can_create`):
    the suite checks that the store says so, and skips the create-only tests where it cannot."""

    part_bytes: int = 64 * 1024
    """The multipart part size the multipart test uploads with (S3 takes no part under 5 MiB;
    a store that writes objects whole ignores it: keep it small there)."""

    racers: int = 8
    """Threads that race to create one key."""

    def open_store(self, location: Path) -> ObjectStore:
        """A fresh, empty store for one test."""
        raise NotImplementedError

    def remove_store(self, store: ObjectStore) -> None:
        """Remove what a test left (the default: every object it lists; a backend whose
        fixture removes its whole bucket or directory need not override it)."""
        with contextlib.suppress(OSError):
            store.delete(keys_of(store.list()))

    def parts_of(self, store: ObjectStore, key: str) -> int | None:
        """How many parts the object ``key`` was uploaded in, if the backend can tell (S3: the
        ``-N`` of a multipart ETag); None: it cannot."""
        return None

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ObjectStore]:
        opened = self.open_store(tmp_path / "objects")
        yield opened
        self.remove_store(opened)

    @pytest.fixture
    def creating(self, store: ObjectStore) -> ObjectStore:
        """The store, for tests of create-only writes: skipped where it cannot create."""
        if not self.can_create:
            pytest.skip("the store declares no create-only write (can_create is False)")
        return store

    # ---- write and read ----

    def test_a_write_reads_back_whole(self, store: ObjectStore) -> None:
        for key, data in [("empty", b""), ("one", b"\x00"), ("small", payload(1000)),
                          ("all-bytes", bytes(range(256)) * 3)]:
            store.put(key, data)
            assert store.get(key) == data, key
        store.put("from-bytearray", bytearray(b"abc"))
        store.put("from-view", memoryview(b"xyz")[1:])
        assert (store.get("from-bytearray"), store.get("from-view")) == (b"abc", b"yz")

    def test_a_second_write_replaces_the_object(self, store: ObjectStore) -> None:
        store.put("k", payload(500, seed=1))
        store.put("k", b"shorter")
        assert store.get("k") == b"shorter"
        assert store.list() == [ObjectInfo("k", 7)]

    def test_keys_with_nested_prefixes(self, store: ObjectStore) -> None:
        keys = ["top", "a/1", "a/b/2", "a/b/c/3", "a/b/c/d/e/f/4", "a/bb/5", "z/y/x/6"]
        for i, key in enumerate(keys):
            store.put(key, key.encode() * (i + 1))
        for i, key in enumerate(keys):
            assert store.get(key) == key.encode() * (i + 1), key
            assert store.exists(key), key
        assert keys_of(store.list()) == sorted(keys)
        assert keys_of(store.list("a/b/")) == ["a/b/2", "a/b/c/3", "a/b/c/d/e/f/4"]
        assert keys_of(store.list("a/b/c/d/e/")) == ["a/b/c/d/e/f/4"]
        store.delete(["a/b/c/d/e/f/4"])
        assert keys_of(store.list("a/b/c/")) == ["a/b/c/3"]  # its siblings higher up stay
        assert keys_of(store.list("a/b/c/d")) == []

    # ---- ranged reads ----

    def test_a_ranged_get_behaves_as_a_slice(self, store: ObjectStore) -> None:
        data = payload(4096, seed=2)
        store.put("ranged", data)
        size = len(data)
        for start, end in [
            (0, 1), (0, 100), (None, 100),              # the first bytes
            (1000, 1100), (1, size - 1),                # the middle
            (size - 10, None), (size - 10, size),       # the tail
            (size - 5, size + 100),                     # a range over the end: what is there
            (size, None), (size, size + 10),            # starting at the end: nothing
            (size + 100, None), (size + 100, size + 200),  # past the end: nothing
            (0, None), (None, None),                    # the whole object
            (7, 7), (9, 3),                             # empty and backwards: nothing
        ]:
            assert store.get("ranged", start, end) == data[start:end], (start, end)

    def test_a_ranged_get_of_an_empty_object_is_empty(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get("empty", 0, 10) == b""
        assert store.get("empty", 5) == b""

    # ---- missing keys ----

    def test_a_missing_key_is_a_file_not_found_error_naming_it(self, store: ObjectStore
                                                               ) -> None:
        store.put("there", b"x")
        for start, end in [(None, None), (0, 10), (5, None)]:
            with pytest.raises(FileNotFoundError, match="not/there") as caught:
                store.get("not/there", start, end)
            assert caught.value.errno == errno.ENOENT
        assert not store.exists("not/there")

    def test_a_deleted_key_is_missing(self, store: ObjectStore) -> None:
        store.put("gone/soon", b"x")
        store.delete(["gone/soon"])
        with pytest.raises(FileNotFoundError):
            store.get("gone/soon")
        assert not store.exists("gone/soon")

    # ---- listings ----

    def test_a_listing_shows_a_write_and_a_delete_at_once(self, store: ObjectStore) -> None:
        assert store.list() == [] and store.list("p/") == []
        for n in range(5):
            store.put(f"p/{n}", b"x" * n)
            assert keys_of(store.list("p/")) == [f"p/{i}" for i in range(n + 1)], n
        for n in range(5):
            store.delete([f"p/{n}"])
            assert keys_of(store.list("p/")) == [f"p/{i}" for i in range(n + 1, 5)], n
        assert store.list() == []

    def test_a_listing_is_sorted_with_sizes(self, store: ObjectStore) -> None:
        sizes = {"b/2": 20, "a/10": 0, "a/1": 1, "c": 3000, "a/2": 2}
        for key, size in sizes.items():
            store.put(key, payload(size))
        assert store.list() == [ObjectInfo(key, sizes[key]) for key in sorted(sizes)]

    def test_a_listing_takes_a_plain_string_prefix(self, store: ObjectStore) -> None:
        for key in ("a/b", "a/bc", "a/bd/deep", "a/c", "ab", "b/x"):
            store.put(key, b"x")
        assert keys_of(store.list("a")) == ["a/b", "a/bc", "a/bd/deep", "a/c", "ab"]
        assert keys_of(store.list("a/")) == ["a/b", "a/bc", "a/bd/deep", "a/c"]
        assert keys_of(store.list("a/b")) == ["a/b", "a/bc", "a/bd/deep"]
        assert keys_of(store.list("a/bd/")) == ["a/bd/deep"]
        assert keys_of(store.list("a/bd/deep")) == ["a/bd/deep"]
        assert store.list("a/z") == [] and store.list("nothing/") == [] and store.list("zz") == []

    def test_writes_from_several_threads_all_show_in_one_listing(self, store: ObjectStore
                                                                 ) -> None:
        errors: list[BaseException] = []

        def write(thread: int) -> None:
            try:
                for n in range(4):
                    store.put(f"t/{thread}/{n}", payload(10 * n, seed=thread))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN_SECONDS)
        assert not errors, errors
        assert store.list("t/") == [ObjectInfo(f"t/{t}/{n}", 10 * n)
                                    for t in range(4) for n in range(4)]

    # ---- deletes ----

    def test_a_delete_takes_several_keys_and_ignores_missing_ones(self, store: ObjectStore
                                                                  ) -> None:
        for key in ("d/1", "d/2", "d/3", "d/sub/4", "d/5"):
            store.put(key, b"x")
        store.delete(["d/1", "d/missing", "d/sub/4", "d/3"])
        assert keys_of(store.list("d/")) == ["d/2", "d/5"]
        store.delete(["d/missing", "never/was/here"])  # only missing keys: fine too
        store.delete([])
        store.delete(iter(["d/2", "d/5"]))  # any iterable
        assert store.list() == []

    # ---- create-only writes ----

    def test_can_create_is_declared(self, store: ObjectStore) -> None:
        assert store.can_create is self.can_create
        if not self.can_create:
            with pytest.raises(ConfigError):
                store.create("refused", b"x")
            assert not store.exists("refused")

    def test_a_create_writes_a_new_object(self, creating: ObjectStore) -> None:
        creating.create("c/new", b"first")
        assert creating.get("c/new") == b"first"
        assert creating.list("c/") == [ObjectInfo("c/new", 5)]

    def test_a_second_create_is_refused_and_keeps_the_first_body(self, creating: ObjectStore
                                                                 ) -> None:
        creating.create("c/once", b"first")
        with pytest.raises(FileExistsError):
            creating.create("c/once", b"second")
        assert creating.get("c/once") == b"first"
        creating.put("c/put", b"written")  # an object from a plain write counts as well
        with pytest.raises(FileExistsError):
            creating.create("c/put", b"created")
        assert creating.get("c/put") == b"written"
        assert keys_of(creating.list("c/")) == ["c/once", "c/put"]

    def test_a_create_after_a_delete_succeeds(self, creating: ObjectStore) -> None:
        creating.create("c/again", b"1")
        creating.delete(["c/again"])
        creating.create("c/again", b"2")
        assert creating.get("c/again") == b"2"

    def test_of_racing_creates_of_one_key_exactly_one_wins(self, creating: ObjectStore
                                                           ) -> None:
        start = threading.Barrier(self.racers)
        winners: list[int] = []
        errors: list[BaseException] = []

        def race(racer: int) -> None:
            try:
                start.wait(JOIN_SECONDS)
                creating.create("c/raced", f"racer {racer}".encode())
                winners.append(racer)
            except FileExistsError:
                pass
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=race, args=(r,)) for r in range(self.racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN_SECONDS)
        assert not errors, errors
        assert len(winners) == 1, winners
        assert creating.get("c/raced") == f"racer {winners[0]}".encode()

    # ---- multipart ----

    def test_a_multipart_upload_reads_back_identical(self, store: ObjectStore) -> None:
        part = self.part_bytes
        data = payload(2 * part + part // 2 + 17, seed=3)  # three parts, the last one short
        store.put("big/object", data, part_bytes=part)
        assert store.list("big/") == [ObjectInfo("big/object", len(data))]
        assert store.get("big/object") == data
        for start, end in [(part - 10, part + 10), (2 * part - 1, 2 * part + 1),
                           (len(data) - 5, None)]:  # across the parts' boundaries, the tail
            assert store.get("big/object", start, end) == data[start:end], (start, end)
        parts = self.parts_of(store, "big/object")
        assert parts is None or parts == 3, parts


__all__ = ["JOIN_SECONDS", "ObjectStoreContract", "keys_of", "payload"]
