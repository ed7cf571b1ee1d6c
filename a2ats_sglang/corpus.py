"""Calibration and evaluation text that never needs a download.

- :func:`pydoc_documents` — the standard library's ``pydoc_data.topics`` (~110K tokens of
  English prose about Python), always installed; split into a calibration and a held-out part.
- :func:`read_documents` — user data: ``.txt``/``.md`` files (one document each), ``.jsonl``
  (one JSON object per line, text in ``text_field``) and ``.parquet`` (column ``text_field``);
  directories are walked.
- :func:`uuid_text` — the paper's random-UUID segment (retrieval-style content), seeded.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TEXT_SUFFIXES = (".txt", ".md", ".text")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    source: str
    text: str


def pydoc_documents(split: Literal["all", "calibration", "heldout"] = "all") -> list[Document]:
    """``pydoc_data.topics`` as documents, in a fixed order.

    The split is by a hash of the topic name (about 60 % calibration), so it is stable across
    Python versions that add or drop topics.
    """
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) < 200:
            continue
        bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
        in_calibration = bucket < 6
        if split == "all" or (split == "calibration") == in_calibration:
            docs.append(Document(f"pydoc_data.topics:{name}", text))
    return docs


def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and child.suffix in SUFFIXES:
                yield child
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path}: unsupported data file type (use {', '.join(SUFFIXES)})")
        yield path
    else:
        raise FileNotFoundError(f"data path {path} does not exist")


def read_documents(paths: Sequence[str | Path], text_field: str = "text") -> Iterator[Document]:
    """Stream documents from text, jsonl and parquet files (lazily, in the given order)."""
    for raw in paths:
        for f in _files(Path(raw)):
            if f.suffix in TEXT_SUFFIXES:
                yield Document(str(f), f.read_text(encoding="utf-8", errors="replace"))
            elif f.suffix == ".jsonl":
                with open(f, encoding="utf-8") as fh:
                    for lineno, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{f}:{lineno}: not valid JSON ({e.msg})") from e
                        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                            raise ValueError(f"{f}:{lineno}: no string field {text_field!r}")
                        yield Document(f"{f}:{lineno}", row[text_field])
            else:
                yield from _parquet_documents(f, text_field)


def _parquet_documents(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {table.schema_arrow.names})")
    row = 0
    for batch in table.iter_batches(columns=[text_field], batch_size=256):
        for text in batch.column(0).to_pylist():
            row += 1
            if isinstance(text, str) and text:
                yield Document(f"{path}#{row}", text)


def uuid_text(approx_chars: int, seed: int = 0) -> str:
    """Random UUID strings joined by ", " (the paper's retrieval-style calibration segment)."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < approx_chars:
        s = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        parts.append(s)
        size += len(s) + 2
    return ", ".join(parts)
