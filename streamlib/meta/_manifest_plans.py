"""The checks of a manifest's stream changes, as plans on its state
(:mod:`streamlib.meta._group`): a create, an open, and both queued together by
:meth:`~streamlib.meta.manifest.ManifestMetadataStore.create_and_open`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from streamlib.errors import FencedError, StreamExists, describe
from streamlib.meta import (
    Retention,
    StreamMeta,
    check_id,
    check_node_id,
    check_retention,
    check_text,
    wall_clock_ms,
)
from streamlib.meta._group import Plan
from streamlib.meta._manifest_state import ManifestState, retention_args


def check_node(state: ManifestState, node: str | None, node_epoch: int | None) -> None:
    """A change made by ``node`` at ``node_epoch`` (when both are given): refused with
    FencedError if the node was registered again or taken over since."""
    if node is not None and node_epoch is not None:
        current = state.node(node).node_epoch
        if current != node_epoch:
            raise FencedError(describe("a change by a fenced node", node=node,
                                       node_epoch=node_epoch, current=current))


def create_plan(name: str | None, retention: Retention | None, node: str | None = None,
                node_epoch: int | None = None) -> tuple[Plan, list[int]]:
    """The check of a create (by ``node`` at ``node_epoch``, if given: refused if it is
    fenced), and the list the id it takes is put in once planned. The stream's creation time
    is this node's clock as the create is planned."""
    if name is not None:
        check_text(name, "name")
    retention = check_retention(retention)
    kept = {} if retention is None else retention_args(retention)  # left out if none
    created: list[int] = []

    def plan(state: ManifestState) -> tuple[dict[str, Any], StreamMeta]:
        check_node(state, node, node_epoch)
        if name is not None and name in state.names:
            raise StreamExists(describe("a live stream already has this name",
                                        name=repr(name), stream=state.names[name]))
        stream_id = state.next_id
        created[:] = [stream_id]
        created_ms = wall_clock_ms()
        return ({"id": stream_id, "name": name, **kept, "created_ms": created_ms},
                StreamMeta(stream_id, name, 0, 0, 0, retention=Retention.from_ms(
                    kept.get("max_age_ms"), kept.get("max_bytes")), created_ms=created_ms))

    return plan, created


def open_plan(which: Callable[[], int], expected_epoch: int | None,
              node_id: str | int | None, node_epoch: int | None) -> Plan:
    """The check of an open of the stream ``which()`` names when it is planned (an id that
    a create planned just before may give)."""
    if expected_epoch is not None:
        check_id(expected_epoch, "expected_epoch")
    if node_epoch is not None:
        check_id(node_epoch, "node_epoch")
    node = None if node_id is None else check_node_id(node_id)

    def plan(state: ManifestState) -> tuple[dict[str, Any], StreamMeta]:
        stream_id = which()
        check_node(state, node, node_epoch)
        stream = state.live(stream_id)
        if expected_epoch is not None and stream.epoch != expected_epoch:
            raise FencedError(describe("stream epoch has moved on", stream=stream_id,
                                       expected_epoch=expected_epoch, epoch=stream.epoch))
        epoch = stream.epoch + 1
        # A hand-over still pending stays with the node that holds the data, unless that
        # node opens the stream again: its time as owner goes on, its data and its new
        # appends follow each other (an owner in between wrote nothing: it waited for the
        # release). A stream another node owns is handed over from it.
        handover: tuple[str | None, int | None, int | None] | None = None
        owner, since = stream.owner, stream.since
        if stream.handover_from is not None and stream.handover_from != node:
            handover = (stream.handover_from, stream.handover_epoch, stream.handover_since)
        if node is not None and stream.handover_from == node:
            owner, since = node, stream.handover_since
        elif node is not None:
            if stream.handover_from is None and stream.owner not in (None, node):
                handover = (stream.owner, stream.epoch, stream.since)
            if stream.owner != node:
                owner, since = node, epoch
        was, was_epoch, was_since = handover or (None, None, None)
        return ({"id": stream_id, "epoch": epoch, "owner": owner, "since": since,
                 "from": None if handover is None else list(handover)},
                dataclasses.replace(stream.meta(), epoch=epoch, owner=owner,
                                    handover_from=was, handover_epoch=was_epoch,
                                    owner_since=since, handover_since=was_since))

    return plan
