"""``streamlib check-store``: the right verdict on moto, SeaweedFS, a local directory and
memory, and a clear one for a store that ignores create-only conditions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamlib.cli import check_store, main
from streamlib.testing.s3 import S3Endpoint

pytestmark = pytest.mark.once  # object-store checks: the codec plays no part


def outcomes(report: object) -> dict[str, str]:
    return {c.name: c.outcome for c in report.checks}  # type: ignore[attr-defined]


@pytest.mark.parametrize("server", ["moto_s3", "seaweedfs_s3"])
def test_s3_servers(server: str, request: pytest.FixtureRequest) -> None:
    endpoint: S3Endpoint = request.getfixturevalue(server)
    bucket = endpoint.create_bucket()
    try:
        report = check_store(f"s3://{bucket}/x", endpoint.storage_options())
        print("\n" + report.text())
        found = outcomes(report)
        assert found["write and read"] == found["ranged GET"] == "ok"
        assert found["list after write"] == found["multipart upload"] == "ok"
        assert found["create only if absent"] == "ok", report.text()
        assert report.verdict == "shared"
        assert endpoint.fs.find(bucket) == []  # cleaned up after itself (no object left)
    finally:
        endpoint.delete_bucket(bucket)


def test_a_local_directory_is_shared_and_memory_in_process(tmp_path: Path) -> None:
    local = check_store(f"file://{tmp_path}")
    assert local.verdict == "shared" and outcomes(local)["multipart upload"] == "not needed"
    assert list(tmp_path.iterdir()) == []
    memory = check_store("memory://check-store-test")
    assert memory.verdict == "in-process"
    assert "nothing outside this process" in memory.text()


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-store", f"file://{tmp_path}"]) == 0
    assert "verdict: shared" in capsys.readouterr().out
    assert main(["check-store", "memory://cli-test", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"] == "in-process"
    with pytest.raises(SystemExit):
        main(["check-store", "memory://x", "--storage-options", "[1]"])
    assert "must be a JSON object" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "streamlib", "check-store", f"file://{tmp_path}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "verdict: shared" in done.stdout
