"""Calibration/evaluation text sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from a2ats_sglang.corpus import pydoc_documents, read_documents, uuid_text


def test_pydoc_split_is_disjoint_and_complete() -> None:
    every = {d.source for d in pydoc_documents("all")}
    cal = {d.source for d in pydoc_documents("calibration")}
    held = {d.source for d in pydoc_documents("heldout")}
    assert cal and held and not cal & held and cal | held == every
    assert sum(len(d.text) for d in pydoc_documents("all")) > 400_000  # ~110K tokens of prose


def test_reads_text_jsonl_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "beta"}) + "\n\n" + json.dumps({"text": "gamma"}) + "\n")
    pq.write_table(pa.table({"text": ["delta", None, "epsilon"], "id": [1, 2, 3]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    docs = list(read_documents([tmp_path]))
    assert [d.text for d in docs] == ["alpha text", "beta", "gamma", "delta", "epsilon"]
    assert docs[2].source.endswith("b.jsonl:3")


def test_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no string field 'text'"):
        list(read_documents([bad]))
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        list(read_documents([bad]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(read_documents([tmp_path / "missing.txt"]))
    other = tmp_path / "x.csv"
    other.write_text("a,b")
    with pytest.raises(ValueError, match="unsupported data file type"):
        list(read_documents([other]))


def test_uuid_text_is_seeded() -> None:
    a, b = uuid_text(500, seed=1), uuid_text(500, seed=2)
    assert a == uuid_text(500, seed=1) and a != b
    parts = a.split(", ")
    assert len(parts[0]) == 36 and parts[0][14] == "4" and len(a) >= 500
