"""Archives told apart by their first bytes: a .tar.gz whose compressed bytes happen to hold
a zip end record (Python's `zipfile.is_zipfile` says yes to ~8% of small model archives) is
still a tar."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import torch

from models.data.tokenizer import Tokenizer
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.formats.archive import is_zip, pack, unpack
from models.formats.native import save_model


def _misjudged_tar(files: Path, out: Path) -> Path:
    """A .tar.gz of `files` that zipfile.is_zipfile takes for a zip (mtimes varied until one is)."""
    for i in range(2000):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for p in sorted(files.iterdir()):
                info = t.gettarinfo(p, f"m/{p.name}")
                info.mtime = 1_700_000_000 + i
                with p.open("rb") as f:
                    t.addfile(info, f)
        if zipfile.is_zipfile(io.BytesIO(buf.getvalue())):
            out.write_bytes(buf.getvalue())
            return out
    raise AssertionError("no misjudged archive in 2000 tries")


def test_a_tar_that_zipfile_misjudges_is_unpacked_as_a_tar(tokenizer: Tokenizer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    torch.manual_seed(0)
    config = LlamaConfig(tokenizer.vocab_size, 64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48)
    save_model(src, Llama(config).state_dict(), config, tokenizer, {"name": "tiny"})
    archive = _misjudged_tar(src, tmp_path / "m.tar.gz")
    assert zipfile.is_zipfile(archive) and not is_zip(archive)
    out = unpack(archive, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())


def test_a_real_zip_is_a_zip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    assert is_zip(pack(src, tmp_path / "m.zip", "m"))
    assert not is_zip(pack(src, tmp_path / "m.tar.gz", "m"))
