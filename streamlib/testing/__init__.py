"""Test support that ships with streamlib: the contract suites every backend must pass, and
(later) pytest fixtures for users' own tests."""
