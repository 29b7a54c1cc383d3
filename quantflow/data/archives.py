"""Extract .tar, .tar.gz/.tgz (and .tar.bz2/.tar.xz) and .zip archives safely and atomically.

Every member is checked before anything is written: absolute paths, `..` components,
links that leave the target (or pass through another link), device files and FIFOs
are refused with a QuantflowError naming the member and the archive. The archive is
extracted into a temporary sibling of the target and renamed into place, so the target
either holds the whole archive or does not exist (an existing target is replaced only
after a complete extraction). Callers that find the target present may skip extracting.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from quantflow.errors import QuantflowError

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_ZIP_SUFFIXES = (".zip",)
_COPY_CHUNK = 1 << 20
_FILTER_ERROR: type[Exception] = getattr(tarfile, "FilterError", ())  # type: ignore[assignment]
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class _Member:
    """What an archive member would create: a normalized relative path and its kind."""

    name: str  # the member's name as written in the archive
    parts: tuple[str, ...]  # normalized path components inside the target
    kind: str  # "file", "dir", "symlink" or "hardlink"
    link: str = ""  # the link target as written in the archive


def extract_archive(
    archive: str | os.PathLike[str], target_dir: str | os.PathLike[str]
) -> list[Path]:
    """Extract `archive` into `target_dir`; return the files (and links) created, in order.

    The type comes from the suffix: .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip.
    Raises QuantflowError for an unsafe member, an unknown type or a corrupt archive;
    then nothing has been written and `target_dir` is as it was.
    """
    archive, target = Path(archive), Path(target_dir)
    if not archive.is_file():
        raise QuantflowError(f"archive {archive} does not exist; download it first")
    kind = _archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "tar":
            return _extract_tar(archive, target)
        return _extract_zip(archive, target)
    except _FILTER_ERROR as e:  # tarfile's own check caught something ours let through
        member = getattr(getattr(e, "tarinfo", None), "name", "?")
        _refuse(archive, member, f"was refused by tarfile's data filter ({e})")
    except _CORRUPT as e:
        raise QuantflowError(
            f"archive {archive} is corrupt or truncated ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from None
    except OSError as e:
        raise QuantflowError(f"cannot extract {archive} into {target}: {e}") from None
    raise AssertionError("unreachable")


def _archive_kind(archive: Path) -> str:
    """Return "tar" or "zip" from the file name."""
    name = archive.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if name.endswith(_ZIP_SUFFIXES):
        return "zip"
    raise QuantflowError(
        f"cannot extract {archive}: unknown archive type; "
        f"supported are {', '.join(_TAR_SUFFIXES + _ZIP_SUFFIXES)}"
    )


def _normalize(name: str, archive: Path) -> tuple[str, ...]:
    """The path components of member `name`, refusing absolute paths and `..`."""
    if "\x00" in name:
        _refuse(archive, name, "contains a NUL character")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        _refuse(archive, name, "is an absolute path")
    parts = tuple(p for p in unified.split("/") if p not in ("", "."))
    if ".." in parts:
        _refuse(archive, name, "has a '..' component that could leave the target directory")
    return parts


def _refuse(archive: Path, member: str, why: str) -> None:
    """Raise the error for an unsafe member."""
    raise QuantflowError(
        f"refusing to extract {archive}: member {member!r} {why}; nothing was extracted. "
        "The archive may be malicious or damaged: delete it and download it from a trusted source"
    )


def _check_members(members: list[_Member], archive: Path) -> None:
    """Refuse links that leave the target, members under links, and hardlinks to non-files."""
    symlinks = {m.parts for m in members if m.kind == "symlink"}
    files = set()
    kinds: dict[tuple[str, ...], str] = {}
    for m in members:
        if not m.parts and m.kind != "dir":
            _refuse(archive, m.name, "has an empty path")
        before = kinds.get(m.parts, m.kind)
        if before != m.kind and "symlink" in (before, m.kind):
            _refuse(archive, m.name, "appears twice, once as a symbolic link")
        kinds[m.parts] = m.kind
        for depth in range(1, len(m.parts)):
            if m.parts[:depth] in symlinks:
                _refuse(
                    archive, m.name, f"lies under the symbolic link {'/'.join(m.parts[:depth])!r}"
                )
        if m.kind == "symlink":
            if m.link.startswith(("/", "\\")) or (len(m.link) > 1 and m.link[1] == ":"):
                _refuse(archive, m.name, f"is a symbolic link to the absolute path {m.link!r}")
            _resolve_link(m.parts[:-1], m.link, symlinks, archive, m)
        elif m.kind == "hardlink":
            linked = _normalize_link_target(m, archive)
            if linked not in files:
                _refuse(archive, m.name, f"is a hard link to {m.link!r}, not an earlier file")
        if m.kind in ("file", "hardlink"):
            files.add(m.parts)


def _normalize_link_target(m: _Member, archive: Path) -> tuple[str, ...]:
    """A hardlink target (relative to the archive root) as path components inside the target."""
    unified = m.link.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        _refuse(archive, m.name, f"is a hard link to the absolute path {m.link!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        _refuse(archive, m.name, f"is a hard link to {m.link!r}, outside the target directory")
    return tuple(parts)


def _resolve_link(
    directory: tuple[str, ...],
    link: str,
    symlinks: set[tuple[str, ...]],
    archive: Path,
    m: _Member,
) -> None:
    """Walk `link` from `directory` step by step; refuse leaving the target or crossing links."""
    current = list(directory)
    for part in link.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                _refuse(
                    archive, m.name, f"is a symbolic link to {link!r}, outside the target directory"
                )
            current.pop()
            continue
        current.append(part)
        if tuple(current) in symlinks and tuple(current) != m.parts:
            _refuse(
                archive, m.name, f"is a symbolic link through another link ({'/'.join(current)!r})"
            )
        if tuple(current) == m.parts:
            _refuse(archive, m.name, "is a symbolic link to itself")


def _tar_members(tar: tarfile.TarFile, archive: Path) -> list[_Member]:
    """Classify every tar member, refusing devices, FIFOs and unknown types."""
    members = []
    for info in tar.getmembers():
        parts = _normalize(info.name, archive)
        if info.isdir():
            kind = "dir"
        elif info.isfile():
            kind = "file"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        elif info.ischr() or info.isblk():
            _refuse(archive, info.name, "is a device file")
        elif info.isfifo():
            _refuse(archive, info.name, "is a FIFO")
        else:
            _refuse(archive, info.name, f"has the unsupported tar type {info.type!r}")
        members.append(_Member(info.name, parts, kind, info.linkname))
    return members


def _extract_tar(archive: Path, target: Path) -> list[Path]:
    """Validate, then extract a tar archive through a temporary sibling directory."""
    with tarfile.open(archive) as tar:
        members = _tar_members(tar, archive)
        _check_members(members, archive)
        with _staging(target) as staging:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)
    return _created(members, target)


def _zip_kind(info: zipfile.ZipInfo, archive: Path) -> str:
    """file, dir or symlink from the Unix mode a zip entry may carry; refuse the rest."""
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if not mode or stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        _refuse(archive, info.filename, "is a device file")
    _refuse(archive, info.filename, f"has the unsupported file mode {oct(mode)}")
    return ""  # unreachable


def _extract_zip(archive: Path, target: Path) -> list[Path]:
    """Validate, then extract a zip archive (symlinks as links) through a staging directory."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        members = []
        for info in infos:
            kind = _zip_kind(info, archive)
            link = zf.read(info).decode("utf-8") if kind == "symlink" else ""
            members.append(_Member(info.filename, _normalize(info.filename, archive), kind, link))
        _check_members(members, archive)
        with _staging(target) as staging:
            for info, m in zip(infos, members):
                dest = staging.joinpath(*m.parts)
                _check_inside(dest, staging, archive, m.name)
                if m.kind == "dir":
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                if m.kind == "symlink":
                    os.symlink(m.link, dest)
                    continue
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
                mode = (info.external_attr >> 16) & 0o755
                if mode:
                    os.chmod(dest, mode | 0o600)
    return _created(members, target)


def _check_inside(dest: Path, staging: Path, archive: Path, name: str) -> None:
    """Refuse writing where the real path (links resolved) leaves the staging directory."""
    real = os.path.realpath(dest.parent)
    root = os.path.realpath(staging)
    if os.path.commonpath([real, root]) != root:
        _refuse(archive, name, "would be written outside the target directory")


class _staging:
    """A temporary sibling of `target` that becomes `target` when the block succeeds."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.path = Path(
            tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.extract-")
        )
        return self.path

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.path is None:  # __enter__ never ran: nothing was staged
            return
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            _replace_dir(self.path, self.target)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise


def _replace_dir(source: Path, target: Path) -> None:
    """Rename `source` onto `target`, moving an existing target aside first."""
    os.chmod(source, 0o755)  # mkdtemp makes it 0700
    if not target.exists() and not target.is_symlink():
        os.rename(source, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _created(members: list[_Member], target: Path) -> list[Path]:
    """The final paths of the files and links, in archive order, without duplicates."""
    seen: dict[tuple[str, ...], None] = {}
    for m in members:
        if m.kind != "dir":
            seen.setdefault(m.parts, None)
    return [target.joinpath(*parts) for parts in seen]
