"""Model directories as archives (.tar.gz or .zip): packed for export, unpacked for import.

Unpacking refuses absolute paths, `..`, links and special files, and stops past a size
cap, so an uploaded archive cannot write outside its folder or fill the disk.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from models.errors import ArchiveError

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SUFFIXES)


def is_zip(path: Path) -> bool:
    """A zip by its first bytes (a local file header, or the end record of an empty zip).

    `zipfile.is_zipfile` looks for an end record anywhere in the last 64 KiB, which the
    compressed bytes of a .tar.gz contain now and then (about once in 65,000 uploads).
    """
    with path.open("rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path)


def pack(directory: Path, out: Path, root: str) -> Path:
    """`directory`'s files under the folder name `root`, as a .tar.gz (or .zip by suffix)."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, f"{root}/{p.name}")
    else:
        with tarfile.open(out, "w:gz") as t:
            for p in files:
                t.add(p, f"{root}/{p.name}")
    return out


def _safe(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ArchiveError(f"archive member '{name}' would land outside its folder")
    return path


def unpack(archive: Path, dest: Path, max_bytes: int = 8 << 30) -> Path:
    """Extract into dest; returns the folder holding config.json (dest or its one subfolder)."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0

    def budget(size: int) -> None:
        nonlocal total
        total += size
        if total > max_bytes:
            raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes")

    try:
        if is_zip(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    target = dest / _safe(info.filename)
                    budget(info.file_size)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive) as t:
                for member in t:
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise ArchiveError(f"archive member '{member.name}' is not a plain file")
                    target = dest / _safe(member.name)
                    budget(member.size)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = t.extractfile(member)
                    assert data is not None
                    with data, target.open("wb") as dst:
                        shutil.copyfileobj(data, dst)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ArchiveError(f"not a readable .tar.gz or .zip archive: {exc}") from None
    for marker in ("config.json", "adapter_config.json"):  # a model folder, or a PEFT adapter's
        if (dest / marker).is_file():
            return dest
        found = [p.parent for p in dest.glob(f"*/{marker}")]
        if len(found) == 1:
            break
    if len(found) != 1:
        raise ArchiveError(
            "the archive holds no model folder (config.json, or a PEFT adapter's adapter_config.json, "
            "at its top or in one folder)"
        )
    return found[0]
