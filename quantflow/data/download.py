"""Fetch a file from an ordered list of mirrors: verified, resumable, atomic.

Mirrors may be local paths, file:// URLs or http(s):// URLs. Each is tried in
turn; the first whose content matches the checksum is moved onto the
destination with os.replace, so a partial or corrupted file never appears there.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from quantflow import __version__
from quantflow.errors import QuantflowError
from quantflow.formats.atomic import fsync_directory

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
_HEX_LENGTH = {"sha256": 64, "md5": 32}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class _MirrorFailed(Exception):
    """This mirror cannot deliver the file; the message says why."""


class _Retryable(Exception):
    """A network attempt failed in a way that another attempt may fix."""


def _log(message: str) -> None:
    print(f"[quantflow.data.download] {message}", file=sys.stderr, flush=True)


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split "sha256:<hex>" or "md5:<hex>" into (algorithm, lowercase hex)."""
    if not isinstance(checksum, str):
        checksum = repr(checksum)
    algo, sep, digest = checksum.strip().partition(":")
    algo, digest = algo.lower(), digest.lower()
    if (
        not sep
        or algo not in _HEX_LENGTH
        or len(digest) != _HEX_LENGTH[algo]
        or not re.fullmatch(r"[0-9a-f]+", digest)
    ):
        raise QuantflowError(
            f"malformed checksum {checksum!r}: write it as 'sha256:<64 hex digits>' "
            "or 'md5:<32 hex digits>'"
        )
    return algo, digest


def download_file(
    urls: list[str],
    dest: str | os.PathLike[str],
    checksum: str,
    *,
    gunzip: bool = False,
    retries: int = 3,
    timeout: float = 60,
    backoff: float = 1.0,
    progress: bool = True,
    hint: str = "",
) -> Path:
    """Fetch `dest` from the first of `urls` whose content matches `checksum`.

    The checksum applies to the final file (the decompressed payload when
    `gunzip` is true; a payload that is not gzip is kept as-is). HTTP(S) URLs
    get up to `retries` attempts with exponential backoff and resume with a
    Range request after a cut-off transfer. Raises QuantflowError listing every
    URL and why it failed, followed by `hint`, when none works.
    """
    dest = Path(dest)
    try:
        algo, expected = parse_checksum(checksum)
    except QuantflowError as e:
        raise QuantflowError(f"{e} (for {dest})") from None
    if not urls:
        raise QuantflowError(f"no URL given to download {dest}; configure at least one mirror")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        try:
            _fetch_one(url, dest, algo, expected, gunzip, retries, timeout, backoff, progress)
        except _MirrorFailed as e:
            _log(f"{url}: {e}")
            failures.append(f"  - {url}: {e}")
            continue
        _log(f"{dest} fetched from {url} ({algo} {expected} verified)")
        return dest
    message = f"could not download {dest}; every mirror failed:\n" + "\n".join(failures)
    if hint:
        message += "\n" + hint
    raise QuantflowError(message)


def fetch_from_mirrors(
    filename: str,
    mirrors: list[str],
    dest_dir: str | os.PathLike[str],
    checksum: str,
    **kwargs,
) -> Path:
    """Download `filename` from the first good mirror into `dest_dir`.

    Each mirror is a base (local directory, file:// or http(s):// URL) that
    `filename` is appended to. With gunzip=True a trailing ".gz" is dropped from
    the destination name. Other keyword arguments go to download_file.
    """
    urls = [mirror.rstrip("/") + "/" + filename for mirror in mirrors]
    name = filename
    if kwargs.get("gunzip") and name.endswith(".gz"):
        name = name[: -len(".gz")]
    return download_file(urls, Path(dest_dir) / name, checksum, **kwargs)


def _fetch_one(
    url: str,
    dest: Path,
    algo: str,
    expected: str,
    gunzip: bool,
    retries: int,
    timeout: float,
    backoff: float,
    progress: bool,
) -> None:
    """Install `url` onto `dest` or raise _MirrorFailed; leaves no temporaries."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        part = dest.parent / f".{dest.name}.part"
        part.unlink(missing_ok=True)  # parts from other mirrors may differ
        try:
            _http_download(url, part, retries, timeout, backoff, progress)
            _install(part, dest, algo, expected, gunzip)
        finally:
            part.unlink(missing_ok=True)
    else:
        _install(_local_path(url), dest, algo, expected, gunzip)


def _local_path(url: str) -> Path:
    """The existing regular file named by a file:// URL or a plain path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise _MirrorFailed("file:// URLs on another host are not supported")
        path = Path(urllib.request.url2pathname(parts.path))
    elif len(parts.scheme) > 1:  # one letter: a Windows drive
        raise _MirrorFailed(f"unsupported URL scheme {parts.scheme!r}")
    else:
        path = Path(url)
    if not path.exists():
        raise _MirrorFailed("not found")
    if not path.is_file():
        raise _MirrorFailed("not a regular file")
    return path


def _http_download(
    url: str, part: Path, retries: int, timeout: float, backoff: float, progress: bool
) -> None:
    """Download `url` into `part`, retrying and resuming; raise _MirrorFailed."""
    attempts = max(1, retries)
    reason = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _http_attempt(url, part, timeout, progress)
            return
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}"
            e.close()
            if e.code == 416:  # our partial is no use to this server: start over
                part.unlink(missing_ok=True)
            elif 400 <= e.code < 500 and e.code not in (408, 429):
                raise _MirrorFailed(reason) from None  # 404 etc. will not go away
        except (_Retryable, OSError, http.client.HTTPException) as e:
            reason = str(e) or type(e).__name__
        if attempt + 1 < attempts:
            _log(f"{url}: {reason} (attempt {attempt + 1} of {attempts}); retrying")
    raise _MirrorFailed(f"{reason} after {attempts} attempts")


def _http_attempt(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One GET, resuming `part` with a Range request if it holds bytes."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"quantflow/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Retryable("server answered the Range request with the wrong bytes")
            mode = "ab"
        else:  # 200: the server sends the whole file
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        received = have
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=have,
                desc=Path(urllib.parse.urlsplit(url).path).name or url,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                mininterval=5,
                file=sys.stderr,
                disable=not progress,
            ) as bar,
        ):
            # read1, not read: bytes that arrived before a timeout must reach `part`.
            while chunk := response.read1(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _Retryable(f"connection closed after {received} of {total} bytes")


def _install(source: Path, dest: Path, algo: str, expected: str, gunzip: bool) -> None:
    """Copy (or gunzip) `source` to a temporary, verify it, and move it onto `dest`."""
    digest = hashlib.new(algo)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                src = open(source, "rb")
            except OSError as e:
                raise _MirrorFailed(f"cannot read: {e}") from None
            with src:
                if gunzip and src.read(2) == GZIP_MAGIC:
                    src.seek(0)
                    with gzip.GzipFile(fileobj=src, mode="rb") as reader:
                        _copy(reader, out, digest.update, "corrupt gzip")
                else:
                    src.seek(0)
                    _copy(src, out, digest.update, "read error")
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != expected:
            raise _MirrorFailed(f"{algo} mismatch: expected {expected}, got {got}")
        os.replace(tmp, dest)
        done = True
        fsync_directory(dest.parent)
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def _copy(reader: BinaryIO, out: BinaryIO, update: Callable[[bytes], None], what: str) -> None:
    """Stream `reader` into `out` and `update`; read failures become _MirrorFailed."""
    while True:
        try:
            chunk = reader.read(CHUNK)
        except (OSError, EOFError, zlib.error) as e:
            raise _MirrorFailed(f"{what}: {e}") from None
        if not chunk:
            return
        update(chunk)
        out.write(chunk)
