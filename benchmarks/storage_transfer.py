"""Checkpoint transfer through the object store (app/storage/objects.py) against a named peer,
boto3's S3 transfer manager (`upload_file` / `download_file`: multipart, threaded, no
manifest and no verification), on an S3 server on loopback (moto's server, as the tests use).

For each model size, a checkpoint folder like the pipeline writes (`tensors.safetensors`
holding the weights and two Adam moments, plus `state.json`) is
  - saved and uploaded: safetensors save + `ObjectStore.put` (sha256 of each file, the
    upload, the manifest last), against save + boto3 `upload_file` of the same files;
  - downloaded and verified into an empty cache: `ObjectStore.get` (manifest, download,
    sha256 check, rename into place), against boto3 `download_file` of the same files.
Passes alternate ours and the peer; medians of seconds and their ratio.

    .venv/bin/python benchmarks/storage_transfer.py [--sizes 5,25,100] [--passes 3]

Sizes are millions of fp32 parameters. One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.storage.objects import ObjectStore  # noqa: E402
from benchmarks.machine import CpuWindow, environment, log  # noqa: E402
from tests.s3 import S3Server  # noqa: E402


def write_checkpoint(folder: Path, parameters: int) -> None:
    """Weights and two Adam moments, as models/training/checkpoint.py stores them."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    tensors = {f"{part}/w": torch.randn(parameters, generator=g) for part in ("model", "exp_avg", "exp_avg_sq")}
    save_file(tensors, str(folder / "tensors.safetensors"))
    (folder / "state.json").write_text(json.dumps({"step": 100, "rng": list(range(600))}))


def ours_up(scratch: Path, store: ObjectStore, key: str, parameters: int) -> float:
    start = time.perf_counter()
    write_checkpoint(scratch / key, parameters)
    store.put(key)
    return time.perf_counter() - start


def peer_up(scratch: Path, client: Any, bucket: str, key: str, parameters: int) -> float:
    start = time.perf_counter()
    write_checkpoint(scratch / key, parameters)
    for f in sorted((scratch / key).iterdir()):
        client.upload_file(str(f), bucket, f"peer/{key}/{f.name}")
    return time.perf_counter() - start


def ours_down(url: str, cache: Path, key: str) -> float:
    store = ObjectStore(url, cache, 1 << 40)  # a host with an empty cache
    start = time.perf_counter()
    store.get(key)
    return time.perf_counter() - start


def peer_down(client: Any, bucket: str, cache: Path, key: str) -> float:
    start = time.perf_counter()
    (cache / key).mkdir(parents=True)
    for name in ("state.json", "tensors.safetensors"):
        client.download_file(bucket, f"peer/{key}/{name}", str(cache / key / name))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5,25,100", help="millions of parameters, comma-separated")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    server = S3Server(root / "moto.log")
    os.environ.update(server.env())
    bucket = f"bench-{secrets.token_hex(4)}"
    server.make_bucket(bucket)
    client = server.client()
    url = f"s3://{bucket}/ours"
    results: list[dict[str, Any]] = []
    window = CpuWindow()
    try:
        for millions in [float(s) for s in args.sizes.split(",")]:
            parameters = int(millions * 1e6)
            times: dict[str, list[float]] = {"ours_up": [], "peer_up": [], "ours_down": [], "peer_down": []}
            nbytes = 0
            for i in range(args.passes):
                key = f"jobs/j/checkpoints/step-{i:09d}-{parameters}"
                scratch = root / f"w{i}-{parameters}"
                store = ObjectStore(url, scratch, 1 << 40)
                order = [("ours", "peer"), ("peer", "ours")][i % 2]  # alternate who goes first
                for who in order:
                    if who == "ours":
                        times["ours_up"].append(ours_up(scratch / "o", store_at(store, scratch / "o"), key, parameters))
                    else:
                        times["peer_up"].append(peer_up(scratch / "p", client, bucket, key, parameters))
                nbytes = sum(f.stat().st_size for f in (scratch / "o" / key).iterdir())
                for who in order:
                    cache = root / f"c{i}-{parameters}-{who}"
                    if who == "ours":
                        times["ours_down"].append(ours_down(url, cache, key))
                    else:
                        times["peer_down"].append(peer_down(client, bucket, cache, key))
                    shutil.rmtree(cache)
                shutil.rmtree(scratch)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "parameters_millions": millions,
                "checkpoint_mb": round(nbytes / 1e6, 1),
                "seconds": {k: round(v, 3) for k, v in med.items()},
                "ours_vs_peer": {
                    "save_upload": round(med["ours_up"] / med["peer_up"], 3),
                    "download_verify": round(med["ours_down"] / med["peer_down"], 3),
                },
                "ours_mb_per_s": {
                    "save_upload": round(nbytes / 1e6 / med["ours_up"], 1),
                    "download_verify": round(nbytes / 1e6 / med["ours_down"], 1),
                },
            }
            log(json.dumps(row))
            results.append(row)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"results": results, "other_cpu": window.stop(), "environment": environment()}, indent=1))


def store_at(store: ObjectStore, root: Path) -> ObjectStore:
    """The store with its cache (where it reads what it uploads) at `root`."""
    store.root = root
    return store


if __name__ == "__main__":
    main()
