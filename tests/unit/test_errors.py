"""The error kinds come in families by what the caller does (docs/guide.md, "Errors"): one
``except`` handles a family; every kind is a StreamLibError; old names still work, warning."""

from __future__ import annotations

import pytest

import streamlib
from streamlib import errors

pytestmark = pytest.mark.once  # the error kinds, not bytes: the C pass runs it (conftest.py)

FAMILIES = {
    errors.RetryLater: (errors.StorageUnavailable, errors.WalFullError, errors.HandOverPending,
                        errors.CacheMiss),
    errors.Conflict: (errors.OffsetMismatchError, errors.SequenceError, errors.StreamExists,
                      errors.CommitConflict, errors.CompactionConflict, errors.NodeLockedError),
    errors.NotFound: (errors.StreamNotFound, errors.OffsetOutOfRange),
}


@pytest.mark.parametrize("family", list(FAMILIES), ids=lambda f: f.__name__)
def test_each_kind_belongs_to_its_family_only(family: type[Exception]) -> None:
    for kind in FAMILIES[family]:
        assert issubclass(kind, family) and issubclass(kind, errors.StreamLibError)
        for other in FAMILIES:
            assert other is family or not issubclass(kind, other), (kind, other)


def test_an_unknown_outcome_is_not_a_plain_retry() -> None:
    """A blind retry of an append whose outcome is unknown may write it twice: it must not be
    caught by ``except RetryLater`` (nor ``except StorageUnavailable``)."""
    assert not issubclass(errors.OutcomeUnknown, errors.RetryLater)
    assert not issubclass(errors.OutcomeUnknown, errors.StorageUnavailable)
    for single in (errors.FencedError, errors.OutcomeUnknown, errors.StreamClosed,
                   errors.CorruptDataError, errors.ConfigError):
        assert not any(issubclass(single, family) for family in FAMILIES), single


def test_the_builtin_parents_stay() -> None:
    assert issubclass(errors.StorageUnavailable, OSError)
    assert issubclass(errors.WalFullError, TimeoutError)
    assert issubclass(errors.StreamNotFound, LookupError)
    assert issubclass(errors.OffsetOutOfRange, IndexError)
    assert issubclass(errors.ConfigError, ValueError)


def test_the_old_name_of_the_node_lock_error_warns_and_still_catches() -> None:
    with pytest.warns(DeprecationWarning, match="NodeLockedError"):
        old = streamlib.WalLockedError  # type: ignore[attr-defined]  # the deprecated name
    assert old is errors.NodeLockedError
    with pytest.warns(DeprecationWarning):
        assert errors.WalLockedError is errors.NodeLockedError  # type: ignore[attr-defined]  # the deprecated name
    with pytest.raises(AttributeError):
        _ = streamlib.NoSuchError  # type: ignore[attr-defined]  # on purpose
