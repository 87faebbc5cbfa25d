"""The rules of owners and hand-overs (docs/shared-stores.md) that a metadata store declaring
``capabilities.shared`` must keep: part of :class:`~streamlib.testing.meta.MetadataContract`
(these tests skip on a store that does not declare it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamlib.errors import CommitConflict, FencedError
from streamlib.meta import MetadataStore
from streamlib.testing.meta_model import commit_of, holds, register, snapshot


class StoreFixtures:
    """What a contract suite needs of a backend's test class: :meth:`open_store` (a subclass
    provides it) and the fixtures built on it."""

    def open_store(self, location: Path) -> MetadataStore:
        raise NotImplementedError

    @pytest.fixture
    def location(self, tmp_path: Path) -> Path:
        return tmp_path / "meta"

    @pytest.fixture
    def store(self, location: Path) -> Iterator[MetadataStore]:
        store = self.open_store(location)
        yield store
        store.close()

    def reopen(self, store: MetadataStore, location: Path) -> MetadataStore:
        store.close()
        return self.open_store(location)


class OwnersContract(StoreFixtures):
    """Owners and hand-overs, for a store whose ``capabilities.shared`` is true."""


    @pytest.fixture
    def shared_store(self, store: MetadataStore) -> MetadataStore:
        """``store``, if it keeps owners; the tests of owners and hand-overs skip otherwise."""
        if not store.capabilities.shared:
            pytest.skip(f"{type(store).__name__} does not declare capabilities.shared: it "
                        f"keeps no owners and hands nothing over (docs/shared-stores.md)")
        return store

    def reopen_keeping(self, store: MetadataStore, location: Path,
                       *stream_ids: int) -> MetadataStore:
        """``store`` closed and opened again, checked to read the streams back unchanged
        (owners, hand-overs, epochs, offsets)."""
        before = [store.get_stream(s) for s in stream_ids]
        reopened = self.reopen(store, location)
        try:
            assert [reopened.get_stream(s) for s in stream_ids] == before
        except BaseException:
            reopened.close()
            raise
        return reopened

    def test_an_open_by_a_node_makes_it_the_owner(self, shared_store: MetadataStore,
                                                  location: Path) -> None:
        store = shared_store
        created = store.create_stream("s")
        epoch_a = store.register_node("a").node_epoch
        mine = store.open_stream(created.id, node_id="a", node_epoch=epoch_a)
        assert mine == dataclasses.replace(created, epoch=1, owner="a", owner_since=1)
        assert store.get_stream(created.id) == mine
        assert holds(mine) == {"a": ((1, 1), 1), "b": (None, 1), "c": (None, 1)}
        again = store.open_stream(created.id, node_id="a", node_epoch=epoch_a)
        assert again == dataclasses.replace(mine, epoch=2)  # its reopen: no hand-over, same time
        assert holds(again) == {"a": ((1, 2), 2), "b": (None, 2), "c": (None, 2)}
        numbered = store.create_stream().id
        assert store.open_stream(numbered, node_id=7).owner == "7"  # an int id is its str
        store = self.reopen_keeping(store, location, created.id, numbered)
        try:
            assert store.open_stream(created.id, node_id="a", node_epoch=epoch_a) == \
                dataclasses.replace(again, epoch=3)
        finally:
            store.close()

    def test_an_open_by_another_node_hands_the_stream_over(self, shared_store: MetadataStore,
                                                           location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        mine = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        taken = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        assert taken == dataclasses.replace(mine, epoch=3, owner="b", owner_since=3,
                                            handover_from="a", handover_epoch=2,
                                            handover_since=1)
        assert store.get_stream(stream) == taken
        # A commits its records of epochs 1 to 2 with epoch 2; B holds none until the release.
        assert holds(taken) == {"a": ((1, 2), 2), "b": (None, 3), "c": (None, 3)}
        store = self.reopen_keeping(store, location, stream)
        store.close()

    def test_while_handing_over_only_the_node_handing_over_commits(
            self, shared_store: MetadataStore, location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b", "c")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        store = self.reopen_keeping(store, location, stream)  # the hand-over is pending
        try:
            store.commit(commit_of(stream, 0, 5, epoch=1, node="a", node_epoch=nodes["a"]))
            store.commit(commit_of(stream, 5, 8, epoch=1, node="a", node_epoch=nodes["a"]))
            assert store.get_stream(stream).end_offset == 8
            before = snapshot(store, [stream], ("a", "b", "c"))
            # The new owner's commits wait for the release (they would land before the old
            # owner's last records).
            with pytest.raises(CommitConflict, match=f"stream=`{stream}`"):
                store.commit(commit_of(stream, 8, 9, epoch=2, node="b", node_epoch=nodes["b"]))
            for node in ("b", "c"):  # the old epoch is only the node handing over's
                with pytest.raises(FencedError, match=f"stream=`{stream}`"):
                    store.commit(commit_of(stream, 8, 9, epoch=1, node=node))
            assert snapshot(store, [stream], ("a", "b", "c")) == before
            store = self.reopen_keeping(store, location, stream)
            store.commit(commit_of(stream, 8, 10, epoch=1, node="a", node_epoch=nodes["a"]))
            assert store.get_stream(stream).end_offset == 10
        finally:
            store.close()

    def test_the_release_completes_the_hand_over(self, shared_store: MetadataStore,
                                                 location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        taken = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        store.commit(commit_of(stream, 0, 5, epoch=1, node="a", node_epoch=nodes["a"]))
        store.release_streams("a", nodes["a"], [stream])
        released = store.get_stream(stream)
        assert released == dataclasses.replace(taken, end_offset=5, handover_from=None,
                                               handover_epoch=None, handover_since=None)
        assert holds(released) == {"a": (None, 2), "b": ((2, 2), 2), "c": (None, 2)}
        store.release_streams("a", nodes["a"], [stream])  # again: nothing left to release
        assert store.get_stream(stream) == released
        store = self.reopen_keeping(store, location, stream)
        try:
            with pytest.raises(FencedError, match=f"stream=`{stream}`"):
                store.commit(commit_of(stream, 5, 6, epoch=1, node="a", node_epoch=nodes["a"]))
            store.commit(commit_of(stream, 5, 9, epoch=2, node="b", node_epoch=nodes["b"]))
            assert store.get_stream(stream) == dataclasses.replace(released, end_offset=9)
        finally:
            store.close()

    def test_the_node_handing_over_opens_the_stream_again_and_keeps_it(
            self, shared_store: MetadataStore, location: Path) -> None:
        """Before its release: nothing is handed over any more (the owner in between wrote
        nothing, its appends waited for the release) and its time as owner goes on."""
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        mine = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        back = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        assert back == dataclasses.replace(mine, epoch=3)
        assert store.get_stream(stream) == back
        assert holds(back) == {"a": ((1, 3), 3), "b": (None, 3), "c": (None, 3)}
        store = self.reopen_keeping(store, location, stream)
        try:
            store.commit(commit_of(stream, 0, 4, epoch=3, node="a", node_epoch=nodes["a"]))
            for node, epoch in (("b", 2), ("a", 1)):  # B's epoch, and the hand-over's: gone
                with pytest.raises(FencedError, match=f"stream=`{stream}`"):
                    store.commit(commit_of(stream, 4, 5, epoch=epoch, node=node))
            assert store.get_stream(stream) == dataclasses.replace(back, end_offset=4)
        finally:
            store.close()

    def test_a_third_node_opening_leaves_the_hand_over_with_the_node_handing_over(
            self, shared_store: MetadataStore, location: Path) -> None:
        """A opens, B opens (A hands over), C opens before A's release: A still holds the
        data, so the hand-over stays from A (B wrote nothing) and C is the owner."""
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        taken = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        third = store.open_stream(stream, node_id="c")  # C was never registered: node epoch 0
        assert third == dataclasses.replace(taken, epoch=3, owner="c", owner_since=3)
        assert (third.handover_from, third.handover_epoch, third.handover_since) == ("a", 1, 1)
        assert holds(third) == {"a": ((1, 1), 1), "b": (None, 3), "c": (None, 3)}
        store = self.reopen_keeping(store, location, stream)
        try:
            store.commit(commit_of(stream, 0, 3, epoch=1, node="a", node_epoch=nodes["a"]))
            store.release_streams("a", nodes["a"], [stream])
            assert holds(store.get_stream(stream)) == {"a": (None, 3), "b": (None, 3),
                                                       "c": ((3, 3), 3)}
            store.commit(commit_of(stream, 3, 4, epoch=3, node="c", node_epoch=0))
            store.release_streams("c", 0, [stream])
            assert store.get_stream(stream) == dataclasses.replace(
                third, end_offset=4, owner=None, owner_since=None, handover_from=None,
                handover_epoch=None, handover_since=None)
        finally:
            store.close()

    def test_a_release_by_the_owner_leaves_the_stream_without_owner(
            self, shared_store: MetadataStore, location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        mine = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.commit(commit_of(stream, 0, 5, epoch=1, node="a", node_epoch=nodes["a"]))
        store.release_streams("a", nodes["a"], [stream])
        free = store.get_stream(stream)
        assert free == dataclasses.replace(mine, end_offset=5, owner=None, owner_since=None)
        assert holds(free) == {"a": (None, 1), "b": (None, 1), "c": (None, 1)}
        store = self.reopen_keeping(store, location, stream)
        try:
            # The same node opening it again starts a new time as owner: what it held before
            # the release is not its to commit any more.
            again = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
            assert again == dataclasses.replace(free, epoch=2, owner="a", owner_since=2)
            assert holds(again)["a"] == ((2, 2), 2)
            store.release_streams("a", nodes["a"], [stream])
            store = self.reopen_keeping(store, location, stream)
            other = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])  # no hand-over
            assert other == dataclasses.replace(free, epoch=3, owner="b", owner_since=3)
            assert holds(other) == {"a": (None, 3), "b": ((3, 3), 3), "c": (None, 3)}
            store.commit(commit_of(stream, 5, 7, epoch=3, node="b", node_epoch=nodes["b"]))
            assert store.get_stream(stream).end_offset == 7
        finally:
            store.close()

    def test_a_fenced_node_neither_opens_nor_releases(self, shared_store: MetadataStore,
                                                      location: Path) -> None:
        """Node A registered again (another process has its id): the old process's releases,
        opens and commits are refused and change nothing; the new process's are not."""
        store = shared_store
        handed, owned = store.create_stream("handed").id, store.create_stream("owned").id
        nodes = register(store, "a", "b")
        for stream in (handed, owned):
            store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(handed, node_id="b", node_epoch=nodes["b"])
        old = nodes["a"]
        new = store.register_node("a").node_epoch
        before = snapshot(store, [handed, owned], ("a", "b"))
        try:
            for reopen in (False, True):
                if reopen:
                    store = self.reopen_keeping(store, location, handed, owned)
                with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                    store.release_streams("a", old, [handed, owned])
                for stream in (handed, owned):
                    with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                        store.open_stream(stream, node_id="a", node_epoch=old)
                with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                    store.commit(commit_of(handed, 0, 1, epoch=1, node="a", node_epoch=old))
                assert snapshot(store, [handed, owned], ("a", "b")) == before
            other = store.create_stream("other").id  # A holds nothing of it
            with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                store.release_streams("a", old, [other])  # fenced, whatever it holds
            store.commit(commit_of(handed, 0, 1, epoch=1, node="a", node_epoch=new))
            store.release_streams("a", new, [handed, owned])
            assert [(m.owner, m.handover_from) for m in (store.get_stream(handed),
                                                         store.get_stream(owned))] == \
                [("b", None), (None, None)]
        finally:
            store.close()

    def test_a_shared_store_sees_another_processs_changes_when_it_refreshes(
            self, shared_store: MetadataStore, location: Path) -> None:
        """Two instances on one location (two nodes' processes): a change made through one is
        read by the other once it refreshes, and its ``version`` moves (what a node's
        acknowledgement gate relies on); a refresh with nothing new moves nothing."""
        other = self.open_store(location)
        try:
            other.refresh()
            seen = other.version
            assert other.refresh() == 0 and other.version == seen
            stream = shared_store.create_stream("s").id
            shared_store.open_stream(stream, node_id="a")
            assert other.refresh() > 0 and other.version > seen
            assert (other.get_stream(stream).owner, other.get_stream(stream).epoch) == ("a", 1)
        finally:
            other.close()

    def test_an_open_without_a_node_keeps_the_owner_and_a_pending_hand_over(
            self, shared_store: MetadataStore, location: Path) -> None:
        """An open without ``node_id`` (a tool, the contract suite) raises the epoch only: the
        node handing the stream over can still commit what it acknowledged."""
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        try:
            opened = store.open_stream(stream)
            assert (opened.epoch, opened.owner, opened.handover_from, opened.handover_epoch) \
                == (3, "b", "a", 1)
            store = self.reopen_keeping(store, location, stream)
            store.commit(commit_of(stream, 0, 2, epoch=1, node="a", node_epoch=nodes["a"]))
            assert store.get_stream(stream).end_offset == 2
        finally:
            store.close()
