"""Fuzzing of every decoder of stored bytes: the codec's batches, blocks and records, the object
index and footer, the WAL's records and ring header and its recovery scan, the manifest's deltas
and checkpoints (docs/format.md, docs/wal.md, docs/shared-stores.md).

- :mod:`fuzz.targets`: one target a decoder — a function of bytes, its seeds (what streamlib's
  writers write), what it may raise, and how to reseal its checksums after a mutation;
- :mod:`fuzz.mutate`: the byte and JSON mutations, which know no format;
- :mod:`fuzz.forge`: what they need to know of each format (header fields, checksums to
  recompute, a block or a checkpoint rebuilt around changed contents);
- :mod:`fuzz.harness`: the loop and its bounds (only documented exceptions, under a second of
  CPU, under 64 MiB), run as ``python -m fuzz`` with ``tests`` on ``sys.path``;
- ``test_fuzz.py``: a short run in the suite (a fixed seed, a few seconds per backend).

``make fuzz`` runs it longer over both backends (``FUZZ_SECONDS``); ``make asan`` runs the codec
targets against the C codec built with AddressSanitizer and UBSan.
"""
