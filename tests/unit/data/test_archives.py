"""Tests for quantflow.data.archives: safe, all-or-nothing extraction of tar and zip archives."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from quantflow.data import archives
from quantflow.data.archives import extract_archive
from quantflow.errors import QuantflowError

# A member is (name, kind, payload): kind "file" (payload bytes), "dir", "symlink" or
# "hardlink" (payload: the link target), "chr" (a character device).
Member = tuple[str, str, object]
GOOD: list[Member] = [
    ("pkg/", "dir", None),
    ("pkg/a.txt", "file", b"alpha"),
    ("pkg/sub/b.bin", "file", bytes(range(256))),
    ("pkg/link-to-a", "symlink", "a.txt"),
]


def make_tar(path: Path, members: list[Member]) -> Path:
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name.rstrip("/") if kind == "dir" else name)
            info.mode = 0o644
            data = None
            if kind == "file":
                info.size = len(payload)
                data = io.BytesIO(payload)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, data)
    return path


def make_zip(path: Path, members: list[Member]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            if kind == "file":
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, payload)
            elif kind == "dir":
                info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                zf.writestr(info, b"")
            elif kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, payload.encode())
            elif kind == "chr":
                info.external_attr = (stat.S_IFCHR | 0o644) << 16
                zf.writestr(info, b"")
            else:
                raise ValueError(kind)
    return path


def make(path: Path, members: list[Member]) -> Path:
    return make_zip(path, members) if path.suffix == ".zip" else make_tar(path, members)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(folder holding the archives, target directory inside its own empty parent)."""
    src = tmp_path / "src"
    src.mkdir()
    return src, tmp_path / "out" / "data"


@pytest.mark.parametrize("name", ["good.tar.gz", "good.tgz", "good.tar", "good.zip"])
def test_extracts_files_dirs_and_inside_links(layout: tuple[Path, Path], name: str) -> None:
    src, target = layout
    archive = make(src / name, GOOD)

    created = extract_archive(archive, target)

    assert created == [target / "pkg/a.txt", target / "pkg/sub/b.bin", target / "pkg/link-to-a"]
    assert (target / "pkg/a.txt").read_bytes() == b"alpha"
    assert (target / "pkg/sub/b.bin").read_bytes() == bytes(range(256))
    assert (target / "pkg/link-to-a").is_symlink()
    assert os.readlink(target / "pkg/link-to-a") == "a.txt"
    assert (target / "pkg/link-to-a").read_bytes() == b"alpha"
    assert sorted(os.listdir(target.parent)) == ["data"]  # no staging folder left


def test_tar_hardlink_inside_is_extracted(layout: tuple[Path, Path]) -> None:
    src, target = layout
    members = GOOD + [("pkg/hard-a", "hardlink", "pkg/a.txt")]
    extract_archive(make(src / "h.tar.gz", members), target)
    assert (target / "pkg/hard-a").read_bytes() == b"alpha"
    assert os.stat(target / "pkg/hard-a").st_ino == os.stat(target / "pkg/a.txt").st_ino


def test_existing_target_is_replaced_only_when_complete(layout: tuple[Path, Path]) -> None:
    src, target = layout
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("old")
    extract_archive(make(src / "good.tar.gz", GOOD), target)
    assert not (target / "stale.txt").exists()
    assert (target / "pkg/a.txt").read_bytes() == b"alpha"
    assert sorted(os.listdir(target.parent)) == ["data"]

    bad = make(src / "bad.tar.gz", GOOD + [("../evil.txt", "file", b"x")])
    with pytest.raises(QuantflowError):
        extract_archive(bad, target)
    assert (target / "pkg/a.txt").read_bytes() == b"alpha"  # the good tree survives
    assert sorted(os.listdir(target.parent)) == ["data"]


UNSAFE = {
    "dotdot": ([("../evil.txt", "file", b"evil")], "../evil.txt", "'..'"),
    "deep-dotdot": ([("pkg/../../evil.txt", "file", b"evil")], "pkg/../../evil.txt", "'..'"),
    "absolute": (
        [("/tmp/quantflow-evil.txt", "file", b"evil")],
        "/tmp/quantflow-evil.txt",
        "absolute",
    ),
    "symlink-out": ([("pkg/escape", "symlink", "../../../evil")], "pkg/escape", "outside"),
    "symlink-abs": ([("pkg/escape", "symlink", "/etc/passwd")], "pkg/escape", "absolute"),
    "through-link": (
        [("pkg/d", "symlink", "."), ("pkg/x", "symlink", "d/../../../evil")],
        "pkg/x",
        "",  # refused by the step-by-step walk, whichever way it is worded
    ),
    "under-link": (
        [("pkg/d", "symlink", "sub"), ("pkg/d/f.txt", "file", b"x")],
        "pkg/d/f.txt",
        "under",
    ),
    "device": ([("pkg/null", "chr", None)], "pkg/null", "device"),
}
TAR_ONLY = {"hardlink-out": ([("pkg/hard", "hardlink", "../evil.txt")], "pkg/hard", "hard link")}


def _check_refused(src: Path, target: Path, archive: Path, member: str, why: str) -> None:
    with pytest.raises(QuantflowError) as err:
        extract_archive(archive, target)
    message = str(err.value)
    assert repr(member) in message
    assert str(archive) in message
    assert why in message
    assert not target.parent.exists() or os.listdir(target.parent) == []  # no half tree
    assert not (target.parent.parent / "evil.txt").exists()
    assert not (target.parent.parent.parent / "evil.txt").exists()
    assert not Path("/tmp/quantflow-evil.txt").exists()
    assert sorted(os.listdir(src)) == [archive.name]


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_member_is_refused_before_writing(
    layout: tuple[Path, Path], case: str, suffix: str
) -> None:
    src, target = layout
    members, member, why = UNSAFE[case]
    # A harmless member first: it must not be written either (validation comes first).
    archive = make(src / f"bad{suffix}", GOOD + members)
    _check_refused(src, target, archive, member, why)


@pytest.mark.parametrize("case", sorted(TAR_ONLY))
def test_tar_hardlink_outside_is_refused(layout: tuple[Path, Path], case: str) -> None:
    src, target = layout
    members, member, why = TAR_ONLY[case]
    _check_refused(src, target, make(src / "bad.tgz", GOOD + members), member, why)


def test_tar_hardlink_to_outside_absolute_is_refused(layout: tuple[Path, Path]) -> None:
    src, target = layout
    archive = make(src / "bad.tar", GOOD + [("pkg/hard", "hardlink", "/etc/passwd")])
    _check_refused(src, target, archive, "pkg/hard", "absolute")


def test_failure_during_extraction_leaves_nothing(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, target = layout
    archive = make(src / "good.tar.gz", GOOD)
    real_makefile = tarfile.TarFile.makefile
    calls = []

    def failing_makefile(self, tarinfo, targetpath):  # the second file hits a full disk
        calls.append(targetpath)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_makefile(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", failing_makefile)
    with pytest.raises(QuantflowError, match="No space left on device"):
        extract_archive(archive, target)
    assert len(calls) == 2
    assert os.listdir(target.parent) == []


def test_zip_failure_during_extraction_leaves_nothing(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, target = layout
    archive = make(src / "good.zip", GOOD)

    def failing_copy(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archives.shutil, "copyfileobj", failing_copy)
    with pytest.raises(QuantflowError, match="No space left on device"):
        extract_archive(archive, target)
    assert os.listdir(target.parent) == []


@pytest.mark.parametrize("name", ["cut.tar.gz", "cut.zip"])
def test_truncated_archive_is_reported_as_corrupt(layout: tuple[Path, Path], name: str) -> None:
    src, target = layout
    archive = make(src / name, GOOD + [("pkg/big.bin", "file", os.urandom(50_000))])
    archive.write_bytes(archive.read_bytes()[:-2000])
    with pytest.raises(QuantflowError, match="corrupt or truncated") as err:
        extract_archive(archive, target)
    assert str(archive) in str(err.value)
    assert not target.parent.exists() or os.listdir(target.parent) == []


def test_unknown_type_and_missing_archive(tmp_path: Path) -> None:
    odd = tmp_path / "data.rar"
    odd.write_bytes(b"Rar!")
    with pytest.raises(QuantflowError, match=r"unknown archive type.*\.tar\.gz"):
        extract_archive(odd, tmp_path / "out")
    with pytest.raises(QuantflowError, match="does not exist"):
        extract_archive(tmp_path / "missing.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
