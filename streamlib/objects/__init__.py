"""Objects: the files the uploader writes to the object store (docs/format.md, "Object"; format
version 2 is written, 1 is read too) — data blocks of one or many streams, an index block, a
32-byte footer.

- :class:`ObjectWriter` (or :func:`encode_object`) builds one object's bytes and returns its
  :class:`ObjectIndex`: the per-stream ranges (:class:`StreamRange`) a metadata commit records
  and the block entries (:class:`IndexEntry`) a reader uses.
- :class:`ObjectReader` reads an object through an :class:`~streamlib.io.ObjectStore`: footer
  and index in one ranged GET of the tail, kept in an :class:`IndexCache`; then only the blocks a
  read needs, adjacent ones in one GET.
- :func:`decode_footer`, :func:`decode_index` and :func:`decode_object_index` parse and check
  the index and footer; :func:`encode_index` and :func:`encode_footer` write them.
"""

from streamlib.objects._format import (
    ENTRY_SIZE,
    FOOTER_SIZE,
    INDEX_HEADER_SIZE,
    VERSION,
    VERSIONS,
    Footer,
    IndexEntry,
    ObjectIndex,
    StreamRange,
    decode_footer,
    decode_index,
    decode_object_index,
    encode_footer,
    encode_index,
)
from streamlib.objects.reader import IndexCache, ObjectReader, plan_parts, plan_runs
from streamlib.objects.writer import ObjectStreamWriter, ObjectWriter, cut_blocks, encode_object

__all__ = [
    "ENTRY_SIZE", "FOOTER_SIZE", "INDEX_HEADER_SIZE", "VERSION", "VERSIONS", "Footer",
    "IndexCache", "IndexEntry", "ObjectIndex", "ObjectReader", "ObjectStreamWriter",
    "ObjectWriter", "StreamRange", "cut_blocks",
    "decode_footer", "decode_index", "decode_object_index", "encode_footer", "encode_index",
    "encode_object", "plan_parts", "plan_runs",
]
