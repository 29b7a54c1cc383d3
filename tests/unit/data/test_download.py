"""Tests for quantflow.data.download against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quantflow.data.download import download_file, fetch_from_mirrors
from quantflow.errors import QuantflowError

PAYLOAD = bytes(range(256)) * 64 + b"the real payload"  # 16 KiB and a bit
OTHER = bytes(reversed(PAYLOAD))  # same size, different content
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 3, "backoff": 0.01, "timeout": 5, "progress": False}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory without logging every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.body` for every GET, misbehaving as `server.plan` says.

    Each request pops the next step of the plan (the last step repeats):
    "ok" serves normally (honouring Range when `server.honour_range`),
    "cut" sends a full Content-Length and then closes after half the bytes,
    "stall" sends half the bytes and then goes quiet for half a second,
    a number answers with that HTTP error status.
    Request headers are recorded in `server.requests`.
    """

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(dict(self.headers))
        step = server.plan.pop(0) if len(server.plan) > 1 else server.plan[0]
        body = server.body
        if isinstance(step, int):
            self.send_error(step)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and server.honour_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if step in ("cut", "stall"):
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            if step == "stall":
                time.sleep(0.5)
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start HTTP servers on 127.0.0.1; returns a function giving the base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(
        directory: Path | None = None,
        *,
        body: bytes = b"",
        plan: list[object] | None = None,
        honour_range: bool = True,
    ) -> str:
        if directory is not None:
            handler = functools.partial(_QuietHandler, directory=str(directory))
        else:
            handler = ScriptedHandler
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.body = body
        server.plan = list(plan or ["ok"])
        server.honour_range = honour_range
        server.requests = []
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    start.servers = servers
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_corrupted_first_mirror_falls_back_to_good_one(
    tmp_path: Path, serve: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad_dir, good_dir, out = tmp_path / "bad", tmp_path / "good", tmp_path / "out"
    bad_dir.mkdir()
    good_dir.mkdir()
    # Both are valid gzip files; only the second decompresses to the right payload.
    (bad_dir / "data.gz").write_bytes(gzip.compress(OTHER))
    (good_dir / "data.gz").write_bytes(gzip.compress(PAYLOAD, mtime=0))
    mirrors = [serve(bad_dir), serve(good_dir) + "/"]

    result = fetch_from_mirrors("data.gz", mirrors, out, SHA, gunzip=True, **FAST)

    assert result == out / "data"
    assert result.read_bytes() == PAYLOAD
    assert _listing(out) == ["data"]  # no .part or .tmp files left
    log = capsys.readouterr().err
    assert "sha256 mismatch" in log
    assert hashlib.sha256(OTHER).hexdigest() in log
    assert f"fetched from {mirrors[1]}data.gz" in log


def test_all_mirrors_fail_lists_each_reason_and_the_hint(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "data").write_bytes(OTHER)
    missing = tmp_path / "nowhere" / "data"
    urls = [
        serve(tmp_path / "empty-but-served") + "/data",  # directory does not exist: 404
        serve(served) + "/data",
        missing.as_uri(),
    ]
    dest = tmp_path / "out" / "data"

    with pytest.raises(QuantflowError) as err:
        download_file(urls, dest, SHA, hint="Install dataset-fashion-mnist.", **FAST)

    lines = str(err.value).splitlines()
    assert str(dest) in lines[0]
    assert lines[1].startswith(f"  - {urls[0]}: HTTP 404")
    assert lines[2].startswith(f"  - {urls[1]}: sha256 mismatch: expected {SHA[7:]}, got ")
    assert lines[3] == f"  - {urls[2]}: not found"
    assert lines[4] == "Install dataset-fashion-mnist."
    assert not dest.exists()
    assert _listing(dest.parent) == []


def test_http_error_that_persists_reports_attempts(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    base = serve(body=PAYLOAD, plan=[503])
    with pytest.raises(QuantflowError, match="HTTP 503.* after 3 attempts"):
        download_file([base + "/data"], tmp_path / "data", SHA, **FAST)
    assert len(serve.servers[0].requests) == 3


def test_404_is_not_retried(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD, plan=[404])
    with pytest.raises(QuantflowError, match="HTTP 404"):
        download_file([base + "/data"], tmp_path / "data", SHA, **FAST)
    assert len(serve.servers[0].requests) == 1


def test_unreachable_server_is_a_failed_mirror(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD)
    server = serve.servers[0]
    server.shutdown()
    server.server_close()  # nothing listens on that port any more
    source = tmp_path / "data"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "data"
    download_file([base + "/data", str(source)], dest, SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("as_uri", [True, False], ids=["file-url", "plain-path"])
def test_local_mirrors(tmp_path: Path, as_uri: bool) -> None:
    mirror = tmp_path / "mirror dir"  # a space: file:// URLs are percent-encoded
    mirror.mkdir()
    (mirror / "data.gz").write_bytes(gzip.compress(PAYLOAD))
    base = mirror.as_uri() if as_uri else str(mirror)
    out = tmp_path / "deep" / "out"

    result = fetch_from_mirrors("data.gz", [base], out, SHA, gunzip=True, **FAST)

    assert result == out / "data"
    assert result.read_bytes() == PAYLOAD
    assert _listing(out) == ["data"]
    assert (mirror / "data.gz").exists()  # the source is left alone


def test_local_file_without_gunzip_is_copied(tmp_path: Path) -> None:
    source = tmp_path / "data.gz"
    source.write_bytes(gzip.compress(PAYLOAD))
    checksum = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    result = fetch_from_mirrors("data.gz", [str(tmp_path)], tmp_path / "out", checksum, **FAST)
    assert result == tmp_path / "out" / "data.gz"
    assert result.read_bytes() == source.read_bytes()


def test_resumes_with_range_after_cut_connection(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD, plan=["cut", "ok"])
    dest = tmp_path / "data"

    download_file([base + "/data"], dest, SHA, **FAST)

    assert dest.read_bytes() == PAYLOAD
    requests = serve.servers[0].requests
    assert len(requests) == 2
    assert "Range" not in requests[0]
    assert requests[1]["Range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert _listing(tmp_path) == ["data"]


def test_resumes_after_timeout_mid_transfer(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD, plan=["stall", "ok"])
    dest = tmp_path / "data"

    download_file([base + "/data"], dest, SHA, **{**FAST, "timeout": 0.1})

    assert dest.read_bytes() == PAYLOAD
    assert serve.servers[0].requests[1]["Range"] == f"bytes={len(PAYLOAD) // 2}-"


def test_server_ignoring_range_restarts_from_zero(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    base = serve(body=PAYLOAD, plan=["cut", "ok"], honour_range=False)
    dest = tmp_path / "data"

    download_file([base + "/data"], dest, SHA, **FAST)

    assert dest.read_bytes() == PAYLOAD  # not the first half twice
    requests = serve.servers[0].requests
    assert len(requests) == 2
    assert "Range" in requests[1]


def test_cut_gzip_download_resumes_and_decompresses(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    base = serve(body=gzip.compress(PAYLOAD), plan=["cut", "ok"])
    result = fetch_from_mirrors("data.gz", [base], tmp_path, SHA, gunzip=True, **FAST)
    assert result.read_bytes() == PAYLOAD
    assert _listing(tmp_path) == ["data"]


def test_server_errors_then_success_is_retried(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD, plan=[500, 500, "ok"])
    dest = tmp_path / "data"
    download_file([base + "/data"], dest, SHA, **{**FAST, "progress": True})
    assert dest.read_bytes() == PAYLOAD
    assert len(serve.servers[0].requests) == 3


def test_gunzip_passes_non_gzip_bytes_through(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD)
    result = fetch_from_mirrors("data.gz", [base], tmp_path, SHA, gunzip=True, **FAST)
    assert result == tmp_path / "data"
    assert result.read_bytes() == PAYLOAD


def test_corrupt_gzip_is_a_failed_mirror(tmp_path: Path, serve: Callable[..., str]) -> None:
    broken = gzip.compress(PAYLOAD)[:-30]
    base = serve(body=broken)
    dest = tmp_path / "out" / "data"
    with pytest.raises(QuantflowError, match="corrupt gzip"):
        download_file([base + "/data.gz"], dest, SHA, gunzip=True, **FAST)
    assert _listing(dest.parent) == []


def test_md5_checksum(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(body=PAYLOAD)
    md5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest().upper()
    result = download_file([base + "/data"], tmp_path / "data", md5, **FAST)
    assert result.read_bytes() == PAYLOAD
    wrong = "md5:" + hashlib.md5(OTHER).hexdigest()
    with pytest.raises(QuantflowError, match="md5 mismatch"):
        download_file([base + "/data"], tmp_path / "again", wrong, **FAST)
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    "checksum",
    [
        "",
        "abc123",
        "sha1:" + "0" * 40,
        "sha256:" + "0" * 63,
        "md5:" + "z" * 32,
        "sha256" + "0" * 64,
    ],
)
def test_malformed_checksum_is_refused(tmp_path: Path, checksum: str) -> None:
    source = tmp_path / "data"
    source.write_bytes(PAYLOAD)
    with pytest.raises(QuantflowError, match="malformed checksum"):
        download_file([str(source)], tmp_path / "out" / "data", checksum, **FAST)
    assert not (tmp_path / "out").exists()


def test_existing_destination_is_never_replaced_by_a_bad_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(OTHER)
    dest = tmp_path / "out" / "data"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(QuantflowError, match="sha256 mismatch"):
        download_file([str(source)], dest, SHA, **FAST)
    assert dest.read_bytes() == b"old"
    assert _listing(dest.parent) == ["data"]
