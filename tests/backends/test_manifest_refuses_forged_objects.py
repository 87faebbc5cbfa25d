"""A manifest refuses every checkpoint and delta in its bucket that its writers could not have
written — forged, damaged, or of another format — with ``CorruptDataError`` naming the object's
key, at open or at refresh, and keeps its in-memory state as it was (docs/shared-stores.md,
"What a reader accepts"). The shapes include those that once escaped as ``MemoryError`` (a zstd
frame claiming a huge size), ``RecursionError`` (deep nesting) and plain Python errors, and
values that were taken and failed later, in reads."""

from __future__ import annotations

import base64
import copy
import json
import struct
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from hypothesis import event, given, settings
from hypothesis import strategies as st

from streamlib.errors import CorruptDataError
from streamlib.io import ObjectStore
from streamlib.meta import MAX_KV_VALUE, MAX_NAME_CHARS, Commit, Replacement, Retention
from streamlib.meta import _manifest_checkpoint as manifest_checkpoint
from streamlib.meta import _manifest_state as manifest_format
from streamlib.meta._manifest_checkpoint import dump_state
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing.meta import make_object

# The manifest: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

HUGE = 1 << 63  # one past the largest id, epoch, offset or position
TOO_LONG = "x" * (MAX_NAME_CHARS + 1)


def populated() -> tuple[ObjectStore, ManifestMetadataStore]:
    """A manifest in memory with something of every kind: live, named and destroyed streams, a
    stream handed over between nodes, committed objects (one in the archive tier), a doomed
    object, a retention, a registered node, a key-value entry. Stream 1 ``one`` (owner ``a``,
    kept an hour; object ``obj-1`` holds [0, 5), ``arc-1`` [5, 9) in the archive, which
    replaced ``obj-2``, doomed), 2 ``two`` (handed over from ``a`` to ``b``), 3 destroyed;
    node ``a`` at epoch 1."""
    objects = ObjectStore.from_url(f"memory://forged-{uuid.uuid4().hex}")
    store = ManifestMetadataStore(objects, node_id="w", checkpoint_every=1000)
    one = store.create_stream("one").id
    two = store.create_stream("two").id
    store.destroy_stream(store.create_stream("gone").id)
    store.register_node("a")
    epoch = store.open_stream(one, node_id="a").epoch
    store.open_stream(two, node_id="a")
    store.open_stream(two, node_id="b")
    store.commit(Commit(node_id="a", wal_position=10, epochs={one: epoch},
                        objects=[make_object("obj-1", (one, 0, 5))]))
    store.commit(Commit(node_id="a", wal_position=11, epochs={one: epoch},
                        objects=[make_object("obj-2", (one, 5, 9))]))
    store.replace(Replacement(inputs=["obj-2"],
                              outputs=[make_object("arc-1", (one, 5, 9), tier="archive")]))
    store.set_retention(one, Retention(max_age=3600))
    store.kv_write("ns", "k", b"value")
    return objects, store


def snapshot(store: ManifestMetadataStore) -> tuple[object, ...]:
    """The handle's whole in-memory state, its derived indexes included."""
    state = store._state
    return (state.version, json.dumps(dump_state(state), sort_keys=True), dict(state.names),
            {stream: list(entries) for stream, entries in state.by_stream.items()})


def read_everything(store: ManifestMetadataStore) -> None:
    """Every read of the interface, over everything the state holds: none may fail."""
    state = store._state
    store.streams()
    for stream_id in list(state.streams):
        meta = store.get_stream(stream_id, include_destroyed=True)
        if meta.live:
            if meta.name is not None:
                store.get_stream_by_name(meta.name)
            store.objects(stream_id)
            store.stream_objects(stream_id)
            store.objects(stream_id, meta.end_offset)
    for node in list(state.nodes):
        store.node(node)
    for namespace in list(state.kv):
        store.kv_items(namespace)
    store.live_objects()
    store.live_objects(limit=1)
    store.doomed()


def delta(store: ManifestMetadataStore, op: str, args: object, /, **envelope: object) -> bytes:
    """The next delta of ``store`` as format-1 writers wrote it, with ``envelope`` fields
    replaced (a value of ``...`` drops the field; ``**V2``: as this format's writers write
    it)."""
    body: dict[str, object] = {"format": 1, "version": store.version + 1, "put": uuid.uuid4().hex,
                               "node": "w", "time": 1_795_000_000_000, "op": op, "args": args}
    body.update(envelope)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def forge_delta(objects: ObjectStore, store: ManifestMetadataStore, body: bytes) -> str:
    key = f"manifest/log/{store.version + 1:020d}"
    objects.create(key, body)
    return key


def assert_refused(objects: ObjectStore, store: ManifestMetadataStore, key: str) -> None:
    """Refused by name at refresh (twice: a retry applies no half of it) and at open; the
    state is as it was."""
    before = snapshot(store)
    for _ in range(2):
        with pytest.raises(CorruptDataError) as refused:
            store.refresh()
        assert refused.value.source == key and key in str(refused.value)
        assert snapshot(store) == before
    with pytest.raises(CorruptDataError) as refused:
        ManifestMetadataStore(objects)
    assert refused.value.source == key


# ---- deltas ----

def deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


V2 = {"format": 2}
V4 = {"format": 4}
NEW = [["new", 100, [[1, 0, 5, 40]]]]  # an output that replaces obj-1 whole

# (name, op, args, envelope changes)
DELTAS: list[tuple[str, str, Any, dict[str, Any]]] = [
    # the envelope
    ("format as a string", "destroy", {"id": 1}, {"format": "1"}),
    ("format as a float", "destroy", {"id": 1}, {"format": 1.0}),
    ("another format", "destroy", {"id": 1}, {"format": 3}),
    ("format 0", "destroy", {"id": 1}, {"format": 0}),
    ("format missing", "destroy", {"id": 1}, {"format": ...}),
    ("version as a string", "destroy", {"id": 1}, {"version": "9"}),
    ("put id as an int", "destroy", {"id": 1}, {"put": 7}),
    ("put id missing", "destroy", {"id": 1}, {"put": ...}),
    ("writer not a node id", "destroy", {"id": 1}, {"node": "no/slash"}),
    ("writer as an int", "destroy", {"id": 1}, {"node": 7}),
    ("time negative", "destroy", {"id": 1}, {"time": -1}),
    ("time as a string", "destroy", {"id": 1}, {"time": "now"}),
    ("unknown operation", "explode", {"id": 1}, {}),
    ("operation as a list", "destroy", {"id": 1}, {"op": ["destroy"]}),
    ("operation missing", "destroy", {"id": 1}, {"op": ...}),
    ("arguments as a list", "destroy", [1], {}),
    ("arguments missing", "destroy", {"id": 1}, {"args": ...}),
    ("an unknown field", "destroy", {"id": 1}, {"extra": 1}),
    ("nested deeper than a delta is", "commit", {"node": "a", "wal_position": 11,
                                                 "objects": deep(6), "remove": []}, {}),
    # create
    ("create: id as a string", "create", {"id": "4", "name": None}, {}),
    ("create: id negative", "create", {"id": -4, "name": None}, {}),
    ("create: id 2^63", "create", {"id": HUGE, "name": None}, {}),
    ("create: id as a bool", "create", {"id": True, "name": None}, {}),
    ("create: id of an existing stream", "create", {"id": 1, "name": "again"}, {}),
    ("create: name as an int", "create", {"id": 4, "name": 5}, {}),
    ("create: name empty", "create", {"id": 4, "name": ""}, {}),
    ("create: name with NUL", "create", {"id": 4, "name": "a\x00b"}, {}),
    ("create: name too long", "create", {"id": 4, "name": TOO_LONG}, {}),
    ("create: name not UTF-8", "create", {"id": 4, "name": "\ud800"}, {}),
    ("create: name of a live stream", "create", {"id": 4, "name": "one"}, {}),
    ("create: name missing", "create", {"id": 4}, {}),
    ("create: an unknown argument", "create", {"id": 4, "name": None, "x": 1}, {}),
    # open
    ("open: unknown stream", "open", {"id": 99, "epoch": 9}, {}),
    ("open: epoch negative", "open", {"id": 1, "epoch": -1}, {}),
    ("open: epoch as a string", "open", {"id": 1, "epoch": "2"}, {}),
    ("open: epoch missing", "open", {"id": 1}, {}),
    ("open: owner as an int", "open", {"id": 1, "epoch": 2, "owner": 7}, {}),
    ("open: owner not a node id", "open", {"id": 1, "epoch": 2, "owner": "a b"}, {}),
    ("open: since as a float", "open", {"id": 1, "epoch": 2, "since": 1.5}, {}),
    ("open: from as a string", "open", {"id": 1, "epoch": 2, "from": "a"}, {}),
    ("open: from too short", "open", {"id": 1, "epoch": 2, "from": ["a"]}, {}),
    ("open: from too long", "open", {"id": 1, "epoch": 2, "from": ["a", 1, 1, 1]}, {}),
    ("open: from of no node", "open", {"id": 1, "epoch": 2, "from": [None, 1, 1]}, {}),
    ("open: from epoch as a string", "open", {"id": 1, "epoch": 2, "from": ["a", "1", 1]}, {}),
    # release
    ("release: node as an int", "release", {"node": 5, "streams": [1]}, {}),
    ("release: streams as a string", "release", {"node": "a", "streams": "1"}, {}),
    ("release: an unknown stream", "release", {"node": "a", "streams": [1, 99]}, {}),
    ("release: a stream id as a string", "release", {"node": "a", "streams": [1, "2"]}, {}),
    # trim, destroy
    ("trim: offset negative", "trim", {"id": 1, "offset": -5}, {}),
    ("trim: offset null", "trim", {"id": 1, "offset": None}, {}),
    ("trim: unknown stream", "trim", {"id": 99, "offset": 0}, {}),
    ("destroy: unknown stream", "destroy", {"id": 99}, {}),
    ("destroy: id as a float", "destroy", {"id": 1.0}, {}),
    # register
    ("register: node as an int", "register", {"node": 5, "epoch": 2}, {}),
    ("register: node empty", "register", {"node": "", "epoch": 2}, {}),
    ("register: epoch 2^64", "register", {"node": "a", "epoch": 1 << 64}, {}),
    ("register: epoch null", "register", {"node": "a", "epoch": None}, {}),
    # commit
    ("commit: objects as an object", "commit",
     {"node": "a", "wal_position": 11, "objects": {"k": 1}, "remove": []}, {}),
    ("commit: an object too short", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", 100]], "remove": []}, {}),
    ("commit: a key as an int", "commit",
     {"node": "a", "wal_position": 11, "objects": [[5, 100, [[1, 5, 9, 40]]]], "remove": []},
     {}),
    ("commit: a key too long", "commit", {"node": "a", "wal_position": 11,
                                          "objects": [[TOO_LONG, 100, [[1, 5, 9, 40]]]],
                                          "remove": []}, {}),
    ("commit: a key already committed", "commit", {"node": "a", "wal_position": 11,
                                                   "objects": [["obj-1", 100, [[1, 5, 9, 40]]]],
                                                   "remove": []}, {}),
    ("commit: a key twice", "commit", {"node": "a", "wal_position": 11, "remove": [],
                                       "objects": [["k", 100, [[1, 5, 9, 40]]],
                                                   ["k", 100, [[1, 9, 12, 40]]]]}, {}),
    ("commit: size negative", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", -1, [[1, 5, 9, 40]]]], "remove": []},
     {}),
    ("commit: no ranges", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", 100, []]], "remove": []}, {}),
    ("commit: a range too short", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", 100, [[1, 5, 9]]]], "remove": []}, {}),
    ("commit: a range of no record", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", 100, [[1, 9, 9, 40]]]], "remove": []},
     {}),
    ("commit: a range of an unknown stream", "commit", {"node": "a", "wal_position": 11,
                                                        "objects": [["k", 100, [[99, 5, 9, 4]]]],
                                                        "remove": []}, {}),
    ("commit: two ranges of one stream", "commit",
     {"node": "a", "wal_position": 11, "remove": [],
      "objects": [["k", 100, [[1, 5, 9, 10], [1, 9, 12, 10]]]]}, {}),
    ("commit: ranges larger than the object", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", 100, [[1, 5, 9, 101]]]], "remove": []},
     {}),
    ("commit: an end offset 2^63", "commit", {"node": "a", "wal_position": 11, "remove": [],
                                              "objects": [["k", 100, [[1, 5, HUGE, 40]]]]}, {}),
    ("commit: remove as a string", "commit",
     {"node": "a", "wal_position": 11, "objects": [], "remove": "obj-1"}, {}),
    ("commit: remove a key as an int", "commit",
     {"node": "a", "wal_position": 11, "objects": [], "remove": [5]}, {}),
    ("commit: remove an object never committed", "commit",
     {"node": "a", "wal_position": 11, "objects": [], "remove": ["nothing"]}, {}),
    ("commit: remove an object twice", "commit",
     {"node": "a", "wal_position": 11, "objects": [], "remove": ["obj-1", "obj-1"]}, {}),
    ("commit: add and remove one object", "commit",
     {"node": "a", "wal_position": 11, "objects": [["k", 100, [[1, 5, 9, 40]]]],
      "remove": ["k"]}, {}),
    ("commit: WAL position as a string", "commit",
     {"node": "a", "wal_position": "11", "objects": [], "remove": []}, {}),
    ("commit: WAL position as a float", "commit",
     {"node": "a", "wal_position": 11.0, "objects": [], "remove": []}, {}),
    ("commit: node missing", "commit", {"wal_position": 11, "objects": [], "remove": []}, {}),
    # key-value entries
    ("kv: value not base64", "kv", {"namespace": "ns", "key": "k", "value": "!!!"}, {}),
    ("kv: value base64 without its padding", "kv",
     {"namespace": "ns", "key": "k", "value": "YQ"}, {}),
    ("kv: value as an int", "kv", {"namespace": "ns", "key": "k", "value": 5}, {}),
    ("kv: value too large", "kv", {"namespace": "ns", "key": "k", "value": base64.b64encode(
        bytes(MAX_KV_VALUE + 1)).decode()}, {}),
    ("kv: namespace as an int", "kv", {"namespace": 5, "key": "k", "value": None}, {}),
    ("kv: namespace empty", "kv", {"namespace": "", "key": "k", "value": "YQ=="}, {}),
    ("kv: key as a list", "kv", {"namespace": "ns", "key": ["k"], "value": "YQ=="}, {}),
    ("kv: key missing", "kv", {"namespace": "ns", "value": "YQ=="}, {}),
    # what format 2 added: in a delta of format 1
    ("format 1: a replace", "replace", {"inputs": ["obj-1"], "outputs": NEW}, {}),
    ("format 1: a forget", "forget", {"keys": ["obj-2"]}, {}),
    ("format 1: a retention", "retention", {"id": 1, "max_age_ms": 5, "max_bytes": None}, {}),
    ("format 1: a create with retention", "create",
     {"id": 4, "name": None, "max_age_ms": 1000, "max_bytes": None}, {}),
    ("format 1: a tier", "commit", {"node": "a", "wal_position": 11, "remove": [],
                                    "objects": [["k", 100, [[1, 9, 12, 40]], "archive"]]}, {}),
    # what format 4 added: in a delta of an earlier format, or out of its range
    ("format 1: a creation time", "create", {"id": 4, "name": None, "created_ms": 5}, {}),
    ("format 2: a creation time", "create", {"id": 4, "name": None, "created_ms": 5}, V2),
    ("create: created_ms negative", "create", {"id": 4, "name": None, "created_ms": -1}, V4),
    ("create: created_ms null", "create", {"id": 4, "name": None, "created_ms": None}, V4),
    ("create: created_ms as a float", "create", {"id": 4, "name": None, "created_ms": 5.0},
     V4),
    ("create: created_ms 2^63", "create", {"id": 4, "name": None, "created_ms": HUGE}, V4),
    # format 2: create and commit
    ("create: max_age_ms zero", "create", {"id": 4, "name": None, "max_age_ms": 0}, V2),
    ("create: max_bytes as a string", "create", {"id": 4, "name": None, "max_bytes": "1"}, V2),
    ("commit: an unknown tier", "commit", {"node": "a", "wal_position": 11, "remove": [],
                                           "objects": [["k", 100, [[1, 9, 12, 40]], "cold"]]},
     V2),
    ("commit: a tier as an int", "commit", {"node": "a", "wal_position": 11, "remove": [],
                                            "objects": [["k", 100, [[1, 9, 12, 40]], 1]]}, V2),
    ("commit: an object too long", "commit",
     {"node": "a", "wal_position": 11, "remove": [],
      "objects": [["k", 100, [[1, 9, 12, 40]], "archive", 1]]}, V2),
    ("commit: a doomed key", "commit", {"node": "a", "wal_position": 11, "remove": [],
                                        "objects": [["obj-2", 100, [[1, 9, 12, 40]]]]}, V2),
    ("commit: remove a doomed object", "commit",
     {"node": "a", "wal_position": 11, "objects": [], "remove": ["obj-2"]}, V2),
    # replace
    ("replace: inputs as a string", "replace", {"inputs": "obj-1", "outputs": NEW}, V2),
    ("replace: no inputs", "replace", {"inputs": [], "outputs": []}, V2),
    ("replace: outputs missing", "replace", {"inputs": ["obj-1"]}, V2),
    ("replace: an input never committed", "replace", {"inputs": ["nothing"], "outputs": NEW},
     V2),
    ("replace: an input doomed", "replace", {"inputs": ["obj-2"], "outputs": []}, V2),
    ("replace: an input twice", "replace", {"inputs": ["obj-1", "obj-1"], "outputs": NEW}, V2),
    ("replace: an input as an int", "replace", {"inputs": [7], "outputs": NEW}, V2),
    ("replace: an output live", "replace",
     {"inputs": ["obj-1"], "outputs": [["arc-1", 100, [[1, 0, 5, 40]]]]}, V2),
    ("replace: an output doomed", "replace",
     {"inputs": ["obj-1"], "outputs": [["obj-2", 100, [[1, 0, 5, 40]]]]}, V2),
    ("replace: an output that is an input", "replace",
     {"inputs": ["obj-1"], "outputs": [["obj-1", 100, [[1, 0, 5, 40]]]]}, V2),
    ("replace: an output twice", "replace", {"inputs": ["obj-1"], "outputs": [
        ["new", 100, [[1, 0, 3, 40]]], ["new", 100, [[1, 3, 5, 40]]]]}, V2),
    ("replace: outputs short of the inputs", "replace",
     {"inputs": ["obj-1"], "outputs": [["new", 100, [[1, 0, 4, 40]]]]}, V2),
    ("replace: outputs not contiguous", "replace", {"inputs": ["obj-1"], "outputs": [
        ["new", 100, [[1, 0, 2, 40]]], ["new-2", 100, [[1, 3, 5, 40]]]]}, V2),
    ("replace: readable records left out", "replace", {"inputs": ["obj-1"], "outputs": []},
     V2),
    ("replace: an output of a stream without inputs", "replace",
     {"inputs": ["obj-1"], "outputs": [["new", 100, [[1, 0, 5, 40], [2, 0, 3, 30]]]]}, V2),
    ("replace: an output of an unknown stream", "replace",
     {"inputs": ["obj-1"], "outputs": [["new", 100, [[1, 0, 5, 40], [99, 0, 3, 30]]]]}, V2),
    ("replace: an unknown tier", "replace",
     {"inputs": ["obj-1"], "outputs": [["new", 100, [[1, 0, 5, 40]], "cold"]]}, V2),
    ("replace: an unknown argument", "replace",
     {"inputs": ["obj-1"], "outputs": NEW, "time": 5}, V2),
    # forget
    ("forget: a key not doomed", "forget", {"keys": ["obj-1"]}, V2),
    ("forget: an unknown key", "forget", {"keys": ["nothing"]}, V2),
    ("forget: no keys", "forget", {"keys": []}, V2),
    ("forget: a key twice", "forget", {"keys": ["obj-2", "obj-2"]}, V2),
    ("forget: keys as a string", "forget", {"keys": "obj-2"}, V2),
    ("forget: a key as an int", "forget", {"keys": [5]}, V2),
    # retention
    ("retention: max_age_ms zero", "retention", {"id": 1, "max_age_ms": 0, "max_bytes": None},
     V2),
    ("retention: max_bytes negative", "retention",
     {"id": 1, "max_age_ms": None, "max_bytes": -1}, V2),
    ("retention: max_age_ms as a float", "retention",
     {"id": 1, "max_age_ms": 1.5, "max_bytes": None}, V2),
    ("retention: max_bytes 2^63", "retention", {"id": 1, "max_age_ms": None, "max_bytes": HUGE},
     V2),
    ("retention: max_bytes as a bool", "retention",
     {"id": 1, "max_age_ms": None, "max_bytes": True}, V2),
    ("retention: max_bytes missing", "retention", {"id": 1, "max_age_ms": None}, V2),
    ("retention: an unknown stream", "retention",
     {"id": 99, "max_age_ms": None, "max_bytes": None}, V2),
]


@pytest.mark.parametrize(("op", "args", "envelope"), [case[1:] for case in DELTAS],
                         ids=[case[0] for case in DELTAS])
def test_a_forged_delta_is_refused_by_name_and_changes_nothing(
        op: str, args: Any, envelope: dict[str, Any]) -> None:
    objects, store = populated()
    key = forge_delta(objects, store, delta(store, op, args, **envelope))
    assert_refused(objects, store, key)


RAW_DELTAS = {
    "empty": b"",
    "not JSON": b'{"format": 1,',
    "not UTF-8": b'{"format": 1, "op": "\xff"}',
    "a JSON list": b"[1, 2]",
    "JSON null": b"null",
    "nested 100,000 deep": b'{"format": 1, "args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "an int of 5,000 digits": b'{"format": 1, "version": ' + b"9" * 5000 + b"}",
    "NaN": b'{"format": NaN}',
}


@pytest.mark.parametrize("body", list(RAW_DELTAS.values()), ids=list(RAW_DELTAS))
def test_a_delta_that_is_not_json_of_the_format_is_refused_by_name(body: bytes) -> None:
    objects, store = populated()
    key = forge_delta(objects, store, body)
    assert_refused(objects, store, key)


def test_a_delta_larger_than_the_bound_is_refused_before_it_is_parsed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    objects, store = populated()
    monkeypatch.setattr(manifest_format, "MAX_DELTA_BYTES", 4096)
    body = delta(store, "kv", {"namespace": "ns", "key": "big",
                               "value": base64.b64encode(bytes(4096)).decode()})
    key = forge_delta(objects, store, body)
    assert_refused(objects, store, key)
    objects.delete([key])
    with pytest.raises(ValueError, match="larger than a delta"):  # nor does a writer write one
        store.kv_write("ns", "big", bytes(4096))
    assert store.refresh() == 0 and store.kv_get("ns", "big") is None


def test_a_well_formed_delta_of_every_operation_applies() -> None:
    """The control: deltas as the writers write them (and as older versions wrote them: an
    open without owner fields, a hand-over of two fields) are taken."""
    objects, store = populated()
    for op, args in [
        ("create", {"id": 4, "name": "four"}),
        ("open", {"id": 4, "epoch": 1}),
        ("open", {"id": 1, "epoch": 3, "owner": "b", "from": ["a", 2]}),
        ("open", {"id": 1, "epoch": 4, "owner": "a", "since": 4, "from": ["b", 3, None]}),
        ("release", {"node": "b", "streams": [1, 2]}),
        ("commit", {"node": "a", "wal_position": 20, "remove": [],
                    "objects": [["k", 100, [[1, 5, 9, 40], [2, 0, 3, 30]]]]}),
        ("trim", {"id": 1, "offset": 9}),
        ("commit", {"node": "a", "wal_position": 20, "objects": [], "remove": ["obj-1"]}),
        ("register", {"node": "c", "epoch": 1}),
        ("kv", {"namespace": "ns", "key": "k", "value": None}),
        ("kv", {"namespace": "ns", "key": "z", "value": "YQ=="}),
        ("destroy", {"id": 2}),
    ]:
        forge_delta(objects, store, delta(store, op, args))
        assert store.refresh() == 1, op
    read_everything(store)
    assert store.get_stream(1).start_offset == 9 and store.kv_get("ns", "z") == b"a"
    assert ManifestMetadataStore(objects).version == store.version


def test_a_well_formed_delta_of_every_format_2_operation_applies() -> None:
    """The control of what format 2 added: retentions, tiers, replaces (with and without
    outputs), forgets; what they doom is marked at the delta's time."""
    objects, store = populated()
    for op, args in [
        ("create", {"id": 4, "name": "four", "max_age_ms": 60_000, "max_bytes": None}),
        ("retention", {"id": 4, "max_age_ms": None, "max_bytes": 4096}),
        ("commit", {"node": "a", "wal_position": 20, "remove": [],
                    "objects": [["k", 100, [[1, 9, 12, 40]], "archive"],
                                ["j", 50, [[4, 0, 2, 20]]]]}),
        ("replace", {"inputs": ["obj-1", "arc-1"], "outputs": [["m", 200, [[1, 0, 9, 90]]]]}),
        ("trim", {"id": 1, "offset": 12}),
        ("replace", {"inputs": ["m"], "outputs": []}),
        ("forget", {"keys": ["obj-2", "obj-1"]}),
        ("commit", {"node": "a", "wal_position": 21, "objects": [], "remove": ["k"]}),
        ("retention", {"id": 1, "max_age_ms": None, "max_bytes": None}),
    ]:
        forge_delta(objects, store, delta(store, op, args, **V2))
        assert store.refresh() == 1, op
    read_everything(store)
    assert store.get_stream(4).retention == Retention(max_bytes=4096)
    assert store.get_stream(1).retention is None
    assert [o.key for o in store.live_objects()] == ["j"]
    assert [(d.key, d.marked_at_ms, d.tier) for d in store.doomed()][-3:] == [
        ("arc-1", 1_795_000_000_000, "archive"), ("k", 1_795_000_000_000, "archive"),
        ("m", 1_795_000_000_000, "")]
    again = ManifestMetadataStore(objects)
    assert snapshot(again) == snapshot(store)
    forge_checkpoint(objects, store, compressed(checkpoint_of(store)))
    assert snapshot(ManifestMetadataStore(objects)) == snapshot(store)


def test_a_well_formed_delta_of_format_4_applies() -> None:
    """The control of what format 4 added: a create's creation time, alone or in a group;
    format 4 holds everything of formats 2 and 3 besides, and a create without a time."""
    objects, store = populated()
    group = {"changes": [{"op": "create", "args": {"id": 5, "name": None, "created_ms": 0}},
                         {"op": "open", "args": {"id": 5, "epoch": 1, "owner": "a",
                                                 "since": 1, "from": None}}]}
    for op, args in [
        ("create", {"id": 4, "name": "four", "max_bytes": 4096,
                    "created_ms": 1_795_000_000_123}),
        ("group", group),
        ("retention", {"id": 4, "max_age_ms": 60_000, "max_bytes": None}),
        ("create", {"id": 6, "name": None}),
    ]:
        forge_delta(objects, store, delta(store, op, args, **V4))
        assert store.refresh() == 1, op
    read_everything(store)
    assert [store.get_stream(s).created_ms for s in (4, 5, 6)] == [1_795_000_000_123, 0, None]
    assert store.get_stream(5).epoch == 1
    assert snapshot(ManifestMetadataStore(objects)) == snapshot(store)
    forge_checkpoint(objects, store, compressed(checkpoint_of(store)))
    assert snapshot(ManifestMetadataStore(objects)) == snapshot(store)


# ---- checkpoints ----

def checkpoint_of(store: ManifestMetadataStore) -> dict[str, Any]:
    return copy.deepcopy(dump_state(store._state))


def forge_checkpoint(objects: ObjectStore, store: ManifestMetadataStore, body: bytes) -> str:
    key = f"manifest/checkpoint/{store.version:020d}"
    objects.create(key, body)
    return key


def compressed(data: object) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(json.dumps(data).encode())


def assert_open_refuses(objects: ObjectStore, key: str) -> str:
    """Refused by name at open; returns the message."""
    with pytest.raises(CorruptDataError) as refused:
        ManifestMetadataStore(objects)
    assert refused.value.source == key and key in str(refused.value)
    return str(refused.value)


def column(table: str, name: str, value: Callable[[list[Any]], object]
           ) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data[table][name] = value(data[table][name])
    return change


def first(value: object) -> Callable[[list[Any]], list[Any]]:
    return lambda values: [value, *values[1:]]


def put(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.update({name: value})


def drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(name)


CHECKPOINTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "a JSON list": lambda data: data.clear(),  # replaced by a list below
    "format as a string": put("format", "1"),
    "another format": put("format", 3),
    "format 1 with what format 2 added": put("format", 1),
    "format 2 with creation times": put("format", 2),
    "version as a bool": put("version", True),
    "next id negative": put("next_id", -1),
    "next id as a float": put("next_id", 4.0),
    "next id not past every stream": put("next_id", 3),
    "next id missing": drop("next_id"),
    "an unknown field": put("extra", []),
    "streams as a list": put("streams", []),
    "streams missing": drop("streams"),
    "a stream column missing": lambda data: data["streams"].pop("epoch"),
    "a stream column too short": column("streams", "name", lambda v: v[:-1]),
    "an unknown stream column": lambda data: data["streams"].update(x=[0, 0, 0]),
    "a stream id as a string": column("streams", "id", first("1")),
    "a stream id twice": column("streams", "id", lambda v: [v[1], *v[1:]]),
    "a stream name as an int": column("streams", "name", first(5)),
    "a stream name empty": column("streams", "name", first("")),
    "a stream name with NUL": column("streams", "name", first("a\x00")),
    "a stream name too long": column("streams", "name", first(TOO_LONG)),
    "a stream name not UTF-8": column("streams", "name", first("\udc80")),
    "two live streams of one name": column("streams", "name", lambda v: [v[1], *v[1:]]),
    "an epoch negative": column("streams", "epoch", first(-1)),
    "a start offset 2^63": column("streams", "start", first(HUGE)),
    "an end offset as a float": column("streams", "end", first(5.0)),
    "live as an int": column("streams", "live", first(1)),
    "an owner not a node id": column("streams", "owner", first("a/b")),
    "an owner as an int": column("streams", "owner", first(7)),
    "a hand-over epoch as a string": column("streams", "from_epoch", first("1")),
    "a first epoch negative": column("streams", "since", first(-1)),
    "objects missing": drop("objects"),
    "an object key as an int": column("objects", "key", first(5)),
    "an object key twice": lambda data: data["objects"].update(
        key=["obj-1", "obj-1"], size=[100, 100], ranges=[1, 1], stream=[1, 1], start=[0, 5],
        end=[5, 9], used=[10, 10]),
    "an object size negative": column("objects", "size", first(-1)),
    "an object of no range": column("objects", "ranges", first(0)),
    "ranges that objects do not claim": column("objects", "stream", lambda v: [*v, 1]),
    "a range of an unknown stream": column("objects", "stream", first(99)),
    "a range of no record": column("objects", "end", first(0)),
    "ranges larger than their object": column("objects", "used", first(10 ** 6)),
    "two ranges of one stream in one object": lambda data: data["objects"].update(
        ranges=[2], stream=[1, 1], start=[0, 5], end=[5, 9], used=[10, 10]),
    "nodes as an object": put("nodes", {"a": [1, 10]}),
    "a node entry too short": put("nodes", [["a", 1]]),
    "a node id as an int": put("nodes", [[7, 1, 10]]),
    "a node id not a node id": put("nodes", [["", 1, 10]]),
    "a node twice": put("nodes", [["a", 1, 10], ["a", 2, 10]]),
    "a WAL position negative": put("nodes", [["a", 1, -10]]),
    "a key-value value not base64": put("kv", [["ns", "k", "%%%"]]),
    "a key-value value too large": put("kv", [["ns", "k", base64.b64encode(
        bytes(MAX_KV_VALUE + 1)).decode()]]),
    "a key-value namespace empty": put("kv", [["", "k", "YQ=="]]),
    "a key-value entry twice": put("kv", [["ns", "k", "YQ=="], ["ns", "k", "Yg=="]]),
    "a key-value entry too long": put("kv", [["ns", "k", "YQ==", 1]]),
    "doomed as an object": put("doomed", {"obj-2": [10, 5, ""]}),
    "a doomed entry too short": put("doomed", [["obj-2", 10, 5]]),
    "a doomed key also live": put("doomed", [["obj-1", 10, 5, ""]]),
    "a doomed key twice": put("doomed", [["x", 10, 5, ""], ["x", 10, 5, ""]]),
    "a doomed key empty": put("doomed", [["", 10, 5, ""]]),
    "a doomed size negative": put("doomed", [["x", -10, 5, ""]]),
    "a doomed time as a string": put("doomed", [["x", 10, "5", ""]]),
    "a doomed tier unknown": put("doomed", [["x", 10, 5, "cold"]]),
    "a tier column too short": column("objects", "tier", lambda v: v[:-1]),
    "a tier unknown": column("objects", "tier", first("cold")),
    "a tier null": column("objects", "tier", first(None)),
    "a retention age zero": column("streams", "max_age_ms", first(0)),
    "a retention size as a float": column("streams", "max_bytes", first(1.5)),
    "a retention size negative": column("streams", "max_bytes", first(-1)),
    "a retention column too short": column("streams", "max_age_ms", lambda v: v[:-1]),
    "a creation time negative": column("streams", "created_ms", first(-1)),
    "a creation time as a float": column("streams", "created_ms", first(1.5)),
    "a creation time 2^63": column("streams", "created_ms", first(HUGE)),
    "a creation time column too short": column("streams", "created_ms", lambda v: v[:-1]),
}


@pytest.mark.parametrize("change", list(CHECKPOINTS.values()), ids=list(CHECKPOINTS))
def test_a_forged_checkpoint_is_refused_by_name_at_open(
        change: Callable[[dict[str, Any]], None]) -> None:
    objects, store = populated()
    data: Any = checkpoint_of(store)
    change(data)
    if not data:
        data = [1, 2]
    key = forge_checkpoint(objects, store, compressed(data))
    assert_open_refuses(objects, key)


def frame_claiming(size: int) -> bytes:
    """A 26-byte zstd frame whose header claims ``size`` bytes of content (single segment, an
    8-byte content size) and holds one raw block of 10 bytes."""
    return (struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", size)
            + bytes([(10 << 3) | 1, 0, 0]) + b"[" * 10)


RAW_CHECKPOINTS = {
    "a 26-byte frame claiming 2^62 bytes": frame_claiming(1 << 62),
    "a frame claiming more than it holds": frame_claiming(1000),
    "not zstd": b"\x00" * 40,
    "empty": b"",
    "a truncated frame": compressed({"format": 1})[:-3],
    "nested 100,000 deep": zstandard.ZstdCompressor().compress(b"[" * 100_000
                                                                + b"]" * 100_000),
    "not UTF-8": zstandard.ZstdCompressor().compress(b'{"format": "\xff"}'),
    "not JSON": zstandard.ZstdCompressor().compress(b'{"format": 1,'),
}


@pytest.mark.parametrize("body", list(RAW_CHECKPOINTS.values()), ids=list(RAW_CHECKPOINTS))
def test_a_checkpoint_that_is_not_json_of_the_format_is_refused_by_name(body: bytes) -> None:
    objects, store = populated()
    key = forge_checkpoint(objects, store, body)
    assert_open_refuses(objects, key)


def test_a_checkpoint_nested_deeper_than_the_format_is_refused() -> None:
    objects, store = populated()
    data = checkpoint_of(store)
    data["nodes"] = [["a", 1, [10]]]  # one level deeper than a checkpoint ever nests
    key = forge_checkpoint(objects, store, compressed(data))
    assert "nested deeper" in assert_open_refuses(objects, key)


@pytest.mark.parametrize("declared", [True, False], ids=["size declared", "size not declared"])
def test_a_checkpoint_larger_than_the_bound_is_refused_while_decompressing(
        declared: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame that inflates past the bound — valid JSON once inflated (leading blanks) — is
    refused whether or not its header says how large it is."""
    objects, store = populated()
    monkeypatch.setattr(manifest_checkpoint, "MAX_CHECKPOINT_BYTES", 1 << 20)
    text = b" " * (1 << 20) + json.dumps(checkpoint_of(store)).encode()
    body = zstandard.ZstdCompressor(write_content_size=declared).compress(text)
    assert zstandard.frame_content_size(body) == (len(text) if declared else -1)
    key = forge_checkpoint(objects, store, body)
    assert "larger than a checkpoint may be" in assert_open_refuses(objects, key)


def test_a_frame_that_declares_more_than_it_holds_costs_what_it_holds() -> None:
    """A frame of a few dozen bytes whose header declares 100 MiB (within the largest
    checkpoint) is refused, and reading it allocates about what it really holds, not what it
    declares."""
    objects, store = populated()
    declared = 100 << 20
    body = bytearray(zstandard.ZstdCompressor().compress(b" " * 70_000))
    descriptor = body[4]  # the frame header descriptor: a 4-byte content size follows it
    assert descriptor >> 6 == 2 and len(body) < 100
    at = 5 if descriptor & 0x20 else 6  # after the window byte, unless single-segment
    struct.pack_into("<I", body, at, declared)
    assert zstandard.frame_content_size(bytes(body)) == declared
    tracemalloc.start()
    try:
        with pytest.raises(manifest_format.Malformed, match="zstd"):
            manifest_checkpoint.read_checkpoint(bytes(body), 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the declared 100 MiB were allocated at once before
    key = forge_checkpoint(objects, store, bytes(body))
    assert "not a zstd frame" in assert_open_refuses(objects, key)


def test_a_well_formed_checkpoint_opens_and_a_legacy_one_too() -> None:
    """The control: the checkpoint as written opens to the same state; one of format 2
    (without creation times), one of format 1 (without doomed objects, tiers and retentions
    either) and one written before owners and key-value entries (without those columns
    either) open too."""
    objects, store = populated()
    data = checkpoint_of(store)
    assert data["format"] == 4 and data["doomed"] and "tier" in data["objects"]
    assert None not in data["streams"]["created_ms"]
    forge_checkpoint(objects, store, compressed(data))
    reopened = ManifestMetadataStore(objects)
    assert snapshot(reopened) == snapshot(store)
    read_everything(reopened)
    data["format"] = 2
    del data["streams"]["created_ms"]
    other = ObjectStore.from_url(f"memory://legacy-{uuid.uuid4().hex}")
    other.create(f"manifest/checkpoint/{store.version:020d}", compressed(data))
    opened = ManifestMetadataStore(other)
    read_everything(opened)
    assert {s.created_ms for s in opened.streams()} == {None}
    assert opened.get_stream(1).retention == store.get_stream(1).retention
    data["format"] = 1
    for table, name in (("streams", "max_age_ms"), ("streams", "max_bytes"),
                        ("objects", "tier")):
        del data[table][name]
    del data["doomed"]
    for legacy in (True, False):
        if legacy:
            for name in ("owner", "from", "from_epoch", "since", "from_since"):
                del data["streams"][name]
            del data["kv"]
        other = ObjectStore.from_url(f"memory://legacy-{uuid.uuid4().hex}")
        other.create(f"manifest/checkpoint/{store.version:020d}", compressed(data))
        opened = ManifestMetadataStore(other)
        read_everything(opened)
        assert opened.doomed() == [] and opened.get_stream(1).retention is None
        assert {o.tier for o in opened.live_objects()} == {""}


# ---- any arguments of any operation ----

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 64), 1 << 64) | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),
    max_leaves=8)
# Likely values first (Hypothesis leans to the first of a sampled list), then the edges.
ids = st.sampled_from([1, 2, 3, 0, 4, 5, -1, (1 << 63) - 1, HUGE]) | st.integers(0, 1 << 20)
new_ids = st.sampled_from([4, 5, 1, -1, (1 << 63) - 1, HUGE])
texts = st.sampled_from(["new", "k", "obj-1", "obj-2", "arc-1", "one", "", "a\x00", TOO_LONG,
                        "\ud800"]) | st.text(min_size=1, max_size=5)
node_ids = st.sampled_from(["a", "b", "c", "", "a b", "-x", 7])
values = st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()) | st.sampled_from(
    ["!!", "YQ", "YQ==\n"])
offsets = st.integers(0, 20) | ids
ranges = st.lists(st.tuples(ids, offsets, offsets, offsets).map(list) | junk, max_size=3)
tiers = st.sampled_from(["archive", "", "cold", None])
object_lists = st.lists(st.tuples(texts, offsets, ranges).map(list)
                        | st.tuples(texts, offsets, ranges, tiers).map(list) | junk, max_size=3)
limits = st.none() | offsets
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "create": {"id": new_ids, "name": st.none() | texts, "max_age_ms": limits,
               "max_bytes": limits, "created_ms": offsets},
    "open": {"id": ids, "epoch": offsets, "owner": st.none() | node_ids,
             "since": st.none() | offsets,
             "from": st.none() | st.lists(st.none() | node_ids | ids, min_size=2, max_size=4)},
    "release": {"node": node_ids, "streams": st.lists(ids, max_size=3)},
    "trim": {"id": ids, "offset": offsets},
    "destroy": {"id": ids},
    "register": {"node": node_ids, "epoch": offsets},
    "commit": {"node": node_ids, "wal_position": offsets, "objects": object_lists,
               "remove": st.lists(texts, max_size=3)},
    "kv": {"namespace": texts, "key": texts, "value": st.none() | values},
    "replace": {"inputs": st.lists(texts, max_size=3), "outputs": object_lists},
    "forget": {"keys": st.lists(texts, max_size=3)},
    "retention": {"id": ids, "max_age_ms": limits, "max_bytes": limits},
}


def rarely(strategy: st.SearchStrategy[Any], otherwise: st.SearchStrategy[Any]
           ) -> st.SearchStrategy[Any]:
    """``strategy`` one time in six, else ``otherwise``."""
    return st.sampled_from([False] * 5 + [True]).flatmap(
        lambda rare: strategy if rare else otherwise)


def arguments(op: str) -> st.SearchStrategy[Any]:
    """Arguments of ``op``: each field a likely value, or now and then junk; now and then a
    field dropped or one added, or junk instead of the whole."""
    fields = FIELDS[op]
    whole = st.fixed_dictionaries({name: rarely(junk, value) for name, value in fields.items()})
    dropped = rarely(st.sets(st.sampled_from(sorted(fields)), min_size=1, max_size=1),
                     st.just(set()))
    added = rarely(st.dictionaries(st.text(max_size=3), junk, min_size=1, max_size=1),
                   st.just({}))
    shaped = st.tuples(whole, dropped, added).map(
        lambda t: {k: v for k, v in t[0].items() if k not in t[1]} | t[2])
    return rarely(junk, shaped)


@pytest.mark.parametrize("op", sorted(FIELDS))
@settings(max_examples=40)
@given(data=st.data())
def test_any_arguments_of_an_operation_apply_whole_or_are_refused(op: str,
                                                                  data: st.DataObject) -> None:
    """Whatever a delta's arguments are, refreshing either applies it — and every read still
    answers — or raises CorruptDataError naming it, with nothing changed."""
    args = data.draw(arguments(op), label="args")
    version = data.draw(st.sampled_from([2, 1, 4]), label="format")
    objects, store = populated()
    before = snapshot(store)
    key = forge_delta(objects, store, delta(store, op, args, format=version))
    try:
        moved = store.refresh()
    except CorruptDataError as refused:
        event("refused")
        assert refused.source == key
        assert snapshot(store) == before
    else:
        event("applied")
        assert moved == 1
        read_everything(store)
    store.close()
