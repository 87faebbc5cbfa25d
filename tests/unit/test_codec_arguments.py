"""The decoders tell the caller's mistakes from damaged bytes: a position or range outside the
buffer is a ValueError (a TypeError for a non-int) naming the argument, never CorruptDataError,
and never silently clipped; damage inside a valid range stays CorruptDataError. Runs on
whichever codec backend this run uses (the suite runs once per backend)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamlib import CorruptDataError, Record, RecordBatch, codec

FRAMES = [codec.encode_batch(1, i, RecordBatch(b"p" * 10, 1, base_timestamp=0))
          for i in range(3)]
BATCHES = b"".join(FRAMES)
BLOCKS = b"".join(codec.encode_block(1, [RecordBatch(b"b" * 10, 1, 0, base_offset=i)])
                  for i in range(3))
PAYLOAD = RecordBatch.from_records([Record(b"v", timestamp=5)]).payload

Ranged = Callable[..., object]
RANGED: dict[str, tuple[Ranged, bytes]] = {
    "scan_batches": (codec.scan_batches, BATCHES),
    "read_batches": (codec.read_batches, BATCHES),
    "scan_blocks": (codec.scan_blocks, BLOCKS),
}


@pytest.mark.parametrize("name", list(RANGED))
@pytest.mark.parametrize(("start", "end", "named"), [
    (-1, None, "start"),
    (0, -1, "end"),
    (-5, -1, "end"),
    (0, 1 << 20, "end"),   # past the buffer
    (1, 0, "start"),       # end before start
    (1 << 20, None, "start"),
])
def test_a_range_outside_the_buffer_is_a_value_error(name: str, start: int, end: int | None,
                                                     named: str) -> None:
    call, buf = RANGED[name]
    with pytest.raises(ValueError, match=f"^{named} must be in .*{named}=`") as caught:
        call(buf, start, end)
    assert not isinstance(caught.value, CorruptDataError)
    with pytest.raises(ValueError, match=f"^{named} must be in"):
        call(buf, start=start, end=end)


@pytest.mark.parametrize("name", list(RANGED))
@pytest.mark.parametrize(("start", "end", "named"), [
    (1.0, None, "start"), ("0", None, "start"), (True, None, "start"), (None, None, "start"),
    (0, 1.0, "end"), (0, "9", "end"), (0, False, "end"),
])
def test_a_position_that_is_not_an_int_is_a_type_error(name: str, start: object, end: object,
                                                       named: str) -> None:
    call, buf = RANGED[name]
    with pytest.raises(TypeError, match=f"^{named} must be an int"):
        call(buf, start, end)


@pytest.mark.parametrize("name", list(RANGED))
def test_a_buffer_that_is_not_bytes_is_a_type_error(name: str) -> None:
    call, _ = RANGED[name]
    for bad in ("text", 7, None, [1, 2]):
        with pytest.raises(TypeError, match=r"^buffer must be bytes-like"):
            call(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(RANGED))
def test_the_edges_of_a_range_are_valid(name: str) -> None:
    call, buf = RANGED[name]
    first = len(FRAMES[0]) if "batches" in name else len(BLOCKS) // 3
    assert len(entries(call(buf, 0, len(buf)))) == 3
    assert len(entries(call(buf, first, first))) == 0
    assert len(entries(call(buf, len(buf)))) == 0
    assert len(entries(call(buf, first, 2 * first))) == 1
    assert len(entries(call(memoryview(buf)[first:], 0, first))) == 1


def entries(result: object) -> list[object]:
    return result.entries if isinstance(result, codec.Scan) else list(result)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", list(RANGED))
def test_damage_inside_a_valid_range_is_corrupt_data(name: str) -> None:
    call, buf = RANGED[name]
    cut = len(buf) - 1  # the last entry is torn inside the range asked for
    with pytest.raises(CorruptDataError, match="truncated") as caught:
        call(buf[:cut], 0, cut, source="seg")
    assert caught.value.source == "seg"
    with pytest.raises(CorruptDataError, match="truncated"):
        call(buf, 0, cut)  # a range that ends inside an entry tears it the same way


@pytest.mark.parametrize("decode", [codec.decode_batch, codec.decode_block])
def test_decode_at_a_position_outside_the_buffer_is_a_value_error(
        decode: Callable[..., object]) -> None:
    buf = BATCHES if decode is codec.decode_batch else BLOCKS
    # The message names the argument as the scan underneath calls it (tests/unit/test_records.py
    # pins the word `start`), with the value given.
    for position in (-1, -len(buf), len(buf) + 1, 1 << 40):
        with pytest.raises(ValueError, match=f"^start must be in .*=`{position}`"):
            decode(buf, position)
    for position in (1.0, True, None, "0"):
        with pytest.raises(TypeError, match=r"^start must be an int"):
            decode(buf, position)
    with pytest.raises(TypeError, match=r"^buffer must be bytes-like"):
        decode(len(buf))
    # At the end of the buffer nothing is framed: the bytes end where an entry should begin.
    with pytest.raises(CorruptDataError, match="truncated"):
        decode(buf, len(buf))


@pytest.mark.parametrize("decode", [codec.index_records, codec.decode_records])
def test_records_positions_and_counts(decode: Callable[..., object]) -> None:
    with pytest.raises(ValueError, match=r"^position must be in"):
        decode(PAYLOAD, 1, 5, position=-1)
    with pytest.raises(TypeError, match=r"^position must be an int"):
        decode(PAYLOAD, 1, 5, position=0.0)
    with pytest.raises(ValueError, match=r"^count must be in"):
        decode(PAYLOAD, -1, 5)
    with pytest.raises(CorruptDataError, match="count"):  # a header's count is data
        decode(PAYLOAD, 2, 5)

