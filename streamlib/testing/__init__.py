"""Test support that ships with streamlib: the contract suites every backend must pass
(``streamlib.testing.meta``, ``.objects``, ``.wal``), fault-injecting components
(``streamlib.testing.faults``), local S3 servers as pytest fixtures (``.s3``), and the pytest
plugin with fixtures for users' own tests (``.plugin``, loaded by pytest through its entry
point; docs/guide.md, "Testing your code").

The suites and the servers import pytest; the fault-injecting components, named here, do not."""

from streamlib.testing.faults import FaultyFileSystem, FaultyMetadataStore

__all__ = ["FaultyFileSystem", "FaultyMetadataStore"]
