"""The config object: defaults, three sources with a fixed precedence, and clear errors."""

from __future__ import annotations

import dataclasses
import pathlib
import warnings

import pytest

from streamlib import Config, ConfigError
from streamlib.config import MiB
from streamlib.errors import ConfigWarning

pytestmark = pytest.mark.once  # settings, not bytes: the C pass runs it (conftest.py)


def test_defaults_are_documented_with_units() -> None:
    config = Config()
    assert config.compression == "lz4" and config.block_bytes == 1 * MiB
    for name, default, unit, doc in Config.describe():
        assert getattr(config, name) == default
        assert unit and len(doc) > 20, name


def test_every_field_is_in_the_user_docs() -> None:
    text = (pathlib.Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for name in Config.field_names():
        assert f"`{name}`" in text and f"STREAMLIB_{name.upper()}" in text, name


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().compression = "zstd"  # type: ignore[misc]


def test_keywords_mapping_and_environment() -> None:
    env = {"STREAMLIB_COMPRESSION": "zstd", "STREAMLIB_BLOCK_BYTES": "256KiB", "HOME": "/x",
           "STREAMLIB_PURE": "1"}
    assert Config.from_env(env).compression == "zstd"
    assert Config.from_env(env).block_bytes == 256 * 1024
    assert Config.from_dict({"zstd_level": 9}).zstd_level == 9
    loaded = Config.load({"block_bytes": "2MiB", "zstd_level": 5}, environ=env, zstd_level=7)
    # precedence: defaults < environment < mapping < keywords
    assert (loaded.compression, loaded.block_bytes, loaded.zstd_level) == ("zstd", 2 * MiB, 7)
    assert Config.load(environ=env, env=False).compression == "lz4"
    assert Config.load(Config(compression="none"), environ=env).compression == "none"
    assert Config().replace(max_batch_bytes="1 MiB").max_batch_bytes == MiB
    assert Config.from_dict(Config(zstd_level=4).to_dict()) == Config(zstd_level=4)


@pytest.mark.parametrize("kwargs, field, text", [
    ({"compression": "gzip"}, "compression", "must be one of none, lz4, zstd"),
    ({"compression": 1}, "compression", "must be one of"),
    ({"zstd_level": 0}, "zstd_level", "at least 1"),
    ({"zstd_level": 23}, "zstd_level", "at most 22"),
    ({"zstd_level": "fast"}, "zstd_level", "must be an integer"),
    ({"zstd_level": "3MiB"}, "zstd_level", "must be an integer"),
    ({"block_bytes": "1TB"}, "block_bytes", "unknown unit"),
    ({"block_bytes": 100}, "block_bytes", "at least 4096 bytes"),
    ({"block_bytes": True}, "block_bytes", "must be an integer"),
    ({"max_batch_bytes": 65 * MiB}, "max_batch_bytes", "at most"),
    ({"max_batch_bytes": 2.5}, "max_batch_bytes", "must be an integer"),
])
def test_bad_values_name_the_field(kwargs: dict, field: str, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        Config(**kwargs)
    assert info.value.field == field and f"field=`{field}`" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_names_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean `compression`"):
        Config.from_dict({"compresion": "lz4"})
    with pytest.warns(ConfigWarning, match="did you mean STREAMLIB_BLOCK_BYTES") as info:
        config = Config.from_env({"STREAMLIB_BLOCKBYTES": "1"})
    assert "variable=`STREAMLIB_BLOCKBYTES` value=`'1'`" in str(info[0].message)
    assert config == Config()  # left out, not half applied
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit Config reads no environment at all
        assert Config.load(Config(zstd_level=5), environ={"STREAMLIB_NOPE": "1",
                                                         "STREAMLIB_ZSTD_LEVEL": "9"}
                           ).zstd_level == 5
    with pytest.raises(TypeError):
        Config("lz4")  # type: ignore[misc]  # keyword arguments only
    with pytest.raises(ConfigError, match="keyword"):
        Config.load(env=False, colour="blue")
    with pytest.raises(ConfigError):
        Config().replace(nope=1)
    with pytest.raises(TypeError, match="mapping"):
        Config.from_dict(["compression"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="field=`zstd_level`"):
        Config.from_env({"STREAMLIB_ZSTD_LEVEL": "high"})
