"""Dataset uploads: validated as a stream (memory bounded by a line, not the file), every bad
line named, a line nested too deep an issue of its own rather than a 500."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from models.data.records import parse_bytes, scan_path
from tests.app.api.conftest import Client, error
from tests.conftest import record_objects


def test_deeply_nested_lines_are_reported_by_line(client: Client) -> None:
    nested = '{"prompt": {"x": ' + "[" * 70 + "1" + "]" * 70 + '}, "completion": "c"}'
    lines = [json.dumps({"prompt": "a", "completion": "b"}), "[" * 100_000 + "]" * 100_000, nested]
    r = client.post("/v1/datasets", files={"file": ("deep.jsonl", "\n".join(lines).encode())})
    err = error(r, 422, "invalid_dataset")
    assert {d["line"] for d in err["details"]} == {2, 3}, err
    assert all("nests more than" in d["reason"] for d in err["details"]), err


def test_a_good_upload_counts_its_records(client: Client, tmp_path: Path) -> None:
    data = "".join(json.dumps(o) + "\n" for o in record_objects(50)).encode()
    r = client.post("/v1/datasets", files={"file": ("pairs.jsonl", data)})
    assert r.status_code == 201 and r.json()["num_records"] == 50, r.text


def test_scanning_keeps_memory_bounded_and_agrees_with_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = json.dumps({"prompt": "How many apples does Nadia have? " * 4, "completion": " 3"}) + "\n"
    path.write_text(line * (4_000_000 // len(line)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        scanned = scan_path(path, "big.jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 4, f"peak {peak} bytes scanning a {size}-byte file"
    parsed = parse_bytes(path.read_bytes(), "big.jsonl")
    assert (scanned.kind, scanned.format, scanned.num_records) == (parsed.kind, parsed.format, parsed.num_records)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\nnot json\n{"prompt": 1}\n')
    for result in (lambda: scan_path(bad, "bad.jsonl"), lambda: parse_bytes(bad.read_bytes(), "bad.jsonl")):
        try:
            result()
        except ValueError as exc:
            assert {i["line"] for i in exc.issues} == {2, 3}  # type: ignore[attr-defined]
        else:
            raise AssertionError("bad lines passed")
