"""The C extension only; everything else is in pyproject.toml.

cffi builds ``streamlib.codec._segment_codec`` from native/ in API mode. The extension is
marked optional (native/build_codec.py), so without a C compiler the install still succeeds and
streamlib runs on its pure-Python codec. cffi builds it for the stable ABI (``abi3``), so the
wheel is tagged ``cp311-abi3``: one wheel for CPython 3.11 and every later one.
"""

from setuptools import setup

setup(cffi_modules=["native/build_codec.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
