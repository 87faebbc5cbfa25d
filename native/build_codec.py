"""Build the segment codec extension with cffi in API mode.

Used two ways:
- by setuptools at install time (``setup.py`` names ``native/build_codec.py:ffibuilder``); the
  extension is optional there, so a machine without a C compiler installs the package and runs
  on the pure-Python twin;
- by ``make asan``: ``python native/build_codec.py --sanitize OUTDIR`` builds an
  AddressSanitizer + UBSan variant into ``OUTDIR/streamlib/codec``.
"""

from __future__ import annotations

import argparse
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "streamlib.codec._segment_codec"
OPTIMIZE = ["-O3", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"]
SANITIZE = ["-O1", "-g", "-std=c99", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def _declarations() -> str:
    """The header, less what cffi's parser does not take (include guards, includes)."""
    with open(os.path.join(HERE, "segment_codec.h")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    keep = []
    for line in text.splitlines():
        words = line.split()
        if not line.startswith("#"):
            keep.append(line)
        elif words[0] == "#define" and len(words) >= 3:
            # cffi takes '#define NAME <integer>'; an expression becomes '...' (the compiler's)
            value = words[2] if len(words) == 3 and words[2].isdigit() else "..."
            keep.append(f"#define {words[1]} {value}")
    return "\n".join(keep)


def make_builder(extra_compile_args: list[str] | None = None,
                 extra_link_args: list[str] | None = None, relative: bool = True) -> FFI:
    builder = FFI()
    builder.cdef(_declarations())
    native = "native" if relative else HERE
    builder.set_source(
        MODULE,
        '#include "segment_codec.h"',
        sources=[os.path.join(native, "segment_codec.c")],
        include_dirs=[native],
        extra_compile_args=extra_compile_args if extra_compile_args is not None else OPTIMIZE,
        extra_link_args=extra_link_args or [],
        optional=True,
    )
    return builder


ffibuilder = make_builder()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sanitize", metavar="OUTDIR", required=True,
                        help="build the ASan+UBSan variant into OUTDIR/streamlib/codec")
    args = parser.parse_args()
    out = os.path.abspath(args.sanitize)
    builder = make_builder(SANITIZE, ["-fsanitize=address,undefined"], relative=False)
    builder.compile(tmpdir=out, verbose=True)


if __name__ == "__main__":
    main()
