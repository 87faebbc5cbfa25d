"""What the metadata checks of the lifecycle operations (:meth:`MetadataStore.replace
<streamlib.meta.MetadataStore.replace>`, ``forget``, ``live_objects``), in one place for every
backend: the rule a replacement's ranges must keep against the streams (the class docstring of
:class:`~streamlib.meta.MetadataStore`, "Replace", step 3), which the manifest's reader checks
too, and the checks of the plain arguments."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

from streamlib.errors import describe
from streamlib.meta import check_text
from streamlib.records import INT64_MAX, check_int

Span = tuple[int, int]  # a range's start and end offsets


def key_problem(inputs: Sequence[str], outputs: Sequence[str],
                known: Callable[[str], str | None]) -> str | None:
    """Steps 1 and 2 of a replacement: the first input not live, or output key taken,
    described; None if none. ``known(key)``: "live", "doomed" or None (never committed)."""
    for key in inputs:
        found = known(key)
        if found != "live":
            return describe("an input is not committed" if found is None
                            else "an input is doomed already (compacted or deleted first)",
                            key=key)
    for key in outputs:
        found = known(key)
        if found is not None:
            return describe(f"an output's key is taken ({found})", key=key)
    return None


def swap_problem(inputs: Mapping[int, Sequence[Span]], outputs: Mapping[int, Sequence[Span]],
                 stream: Callable[[int], tuple[bool, int] | None]) -> str | None:
    """The first stream, by id, whose ranges the swap would break, described (values at the
    end); None if none. ``inputs`` and ``outputs``: each stream's ranges in the inputs and in
    the outputs (any order); ``stream(id)``: whether the stream is live and its start offset
    (None: no such stream)."""
    for stream_id in sorted(inputs.keys() | outputs.keys()):
        found = stream(stream_id)
        live, start_offset = found if found is not None else (False, 0)
        given = sorted(inputs.get(stream_id, ()))
        taken = sorted(outputs.get(stream_id, ()))
        if not given:
            return describe("an output holds records of a stream the inputs do not hold",
                            stream=stream_id)
        a, b = given[0][0], given[-1][1]
        if not taken:
            if live and b > start_offset:
                return describe("the inputs hold readable records no output takes over",
                                stream=stream_id, inputs=f"[{a}, {b})",
                                start_offset=start_offset)
            continue
        if not live:
            return describe("an output holds records of a destroyed stream", stream=stream_id)
        # Ranges wholly below the start hold nothing readable: they go with their inputs, and
        # need not be contiguous with the rest (the planner merges by readable ranges). With
        # nothing readable at all, trimmed records may still be carried over, whole. An output
        # may start as low as the inputs hold records without a gap up to their end.
        readable = [span for span in given if span[1] > start_offset] or given
        a = readable[0][0]
        for what, spans in (("inputs", readable), ("outputs", taken)):
            gap = _gap(spans)
            if gap is not None:
                return describe(f"the {what}' ranges of a stream are not contiguous",
                                stream=stream_id, ranges=gap)
        c, d = taken[0][0], taken[-1][1]
        if d != b:
            return describe("the outputs do not end where the inputs do", stream=stream_id,
                            inputs=f"[{a}, {b})", outputs=f"[{c}, {d})")
        if c < contiguous_from(given):
            return describe("the outputs start below what the inputs hold", stream=stream_id,
                            inputs=f"[{a}, {b})", outputs=f"[{c}, {d})")
        if c > max(a, start_offset):
            return describe("the outputs leave out readable records", stream=stream_id,
                            inputs=f"[{a}, {b})", outputs=f"[{c}, {d})",
                            start_offset=start_offset)
    return None


def contiguous_from(spans: Sequence[Span]) -> int:
    """Where the run of ``spans`` (sorted) that ends with the last one, without a gap,
    starts."""
    start = spans[-1][0]
    for i in range(len(spans) - 1, 0, -1):
        if spans[i - 1][1] != spans[i][0]:
            break
        start = spans[i - 1][0]
    return start


def _gap(spans: Sequence[Span]) -> str | None:
    for (a, b), (c, d) in itertools.pairwise(spans):
        if c != b:
            return f"[{a}, {b}) [{c}, {d})"
    return None


def check_keys(keys: object, what: str = "keys") -> tuple[str, ...]:
    """A sequence of object keys (not one str), each as :func:`~streamlib.meta.check_text`
    takes it."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise TypeError(f"{what} must be a sequence of str, not {type(keys).__name__}")
    return tuple(check_text(key, "key") for key in keys)


def check_page(after: object, limit: object) -> tuple[str | None, int]:
    """The arguments of ``live_objects``: ``after`` None or a str, ``limit`` an int of at
    least 1."""
    if after is not None and not isinstance(after, str):
        raise TypeError(f"after must be a str or None, not {type(after).__name__}")
    return after, check_int(limit, "limit", 1, INT64_MAX)


__all__ = ["Span", "check_keys", "check_page", "contiguous_from", "key_problem",
           "swap_problem"]
