"""Codebook directory: round trip, and a clear error for every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.codebook import (
    Codebook,
    CodebookError,
    CodebookMeta,
    ModelIdentity,
)
from a2ats_sglang.method.rope import UnsupportedRopeError

CONFIGS = Path(__file__).parent / "configs"


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def make_codebook(name: str = "smollm2-135m", size: int = 16) -> Codebook:
    ident = ModelIdentity.from_hf_config(config(name))
    shape = (ident.num_layers, ident.num_kv_heads)
    d = ident.head_dim
    chol = torch.linalg.cholesky(torch.eye(d) * 2 + 0.1).expand(*shape, d, d).contiguous()
    return Codebook(
        CodebookMeta(ident, size, calibration={"text_tokens": 1}),
        torch.randn(*shape, size, d),
        chol,
        torch.linalg.inv(chol),
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Codebook, Path]:
    book = make_codebook()
    return book, book.save(tmp_path / "cb")


def test_round_trip(saved) -> None:  # noqa: ANN001
    book, path = saved
    loaded = Codebook.load(path, model_config=config("smollm2-135m"), codebook_size=16)
    assert loaded.meta == book.meta
    for name in ("centroids_z", "chol", "chol_inv"):
        assert torch.equal(getattr(loaded, name), getattr(book, name))
    torch.testing.assert_close(loaded.decoded, book.centroids_z @ book.chol_inv)
    meta = json.loads((path / "codebook.json").read_text())
    assert meta["format_version"] == 1 and meta["model"]["config_hash"] == book.meta.model.config_hash


def test_codebook_for_another_model(saved) -> None:  # noqa: ANN001
    _, path = saved
    with pytest.raises(CodebookError, match=r"num_layers: codebook 30, model 32") as e:
        Codebook.load(path, model_config=config("llama-3.1-8b"))
    assert "head_dim: codebook 64, model 128" in str(e.value)
    # same shape, other RoPE: still named
    other = {**config("smollm2-135m"), "rope_theta": 10000.0, "rope_parameters": None}
    with pytest.raises(CodebookError, match=r"rope.theta: codebook 100000.0, model 10000.0"):
        Codebook.load(path, model_config=other)


def test_wrong_codebook_size(saved) -> None:  # noqa: ANN001
    _, path = saved
    with pytest.raises(CodebookError, match=r"codebook_size: codebook 16, requested 4096"):
        Codebook.load(path, model_config=config("smollm2-135m"), codebook_size=4096)


def test_truncated_tensor_file(saved) -> None:  # noqa: ANN001
    _, path = saved
    f = path / "codebook.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CodebookError, match="truncated or corrupt"):
        Codebook.load(path)


def test_corrupt_bytes_in_tensor_file(saved) -> None:  # noqa: ANN001
    _, path = saved
    f = path / "codebook.safetensors"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CodebookError, match="truncated or corrupt"):
        Codebook.load(path)


def test_truncated_or_edited_metadata(saved) -> None:  # noqa: ANN001
    _, path = saved
    meta = path / "codebook.json"
    good = meta.read_text()
    meta.write_text(good[: len(good) // 2])
    with pytest.raises(CodebookError, match="not valid JSON"):
        Codebook.load(path)
    edited = json.loads(good)
    edited["model"]["num_layers"] = 32
    meta.write_text(json.dumps(edited))
    with pytest.raises(CodebookError, match="config hash does not match"):
        Codebook.load(path)
    edited = json.loads(good)
    del edited["codebook_size"]
    meta.write_text(json.dumps(edited))
    with pytest.raises(CodebookError, match="malformed field"):
        Codebook.load(path)
    edited = json.loads(good)
    edited["format_version"] = 99
    meta.write_text(json.dumps(edited))
    with pytest.raises(CodebookError, match="format version 99"):
        Codebook.load(path)


def test_missing_files(tmp_path: Path, saved) -> None:  # noqa: ANN001
    _, path = saved
    with pytest.raises(CodebookError, match="does not exist"):
        Codebook.load(tmp_path / "nope")
    (path / "codebook.safetensors").unlink()
    with pytest.raises(CodebookError, match="codebook.safetensors is missing"):
        Codebook.load(path)


def test_tensor_shape_mismatch_with_metadata(tmp_path: Path) -> None:
    book = make_codebook()
    with pytest.raises(CodebookError, match="centroids_z has shape"):
        Codebook(book.meta, book.centroids_z[:, :, :8], book.chol, book.chol_inv)
    bad = book.centroids_z.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CodebookError, match="non-finite"):
        Codebook(book.meta, bad, book.chol, book.chol_inv)


def test_model_with_unsupported_rope(saved) -> None:  # noqa: ANN001
    _, path = saved
    cfg = {**config("smollm2-135m"), "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e5}}
    with pytest.raises(UnsupportedRopeError, match="'dynamic' is not supported"):
        Codebook.load(path, model_config=cfg)


def test_copy_is_still_valid(saved, tmp_path: Path) -> None:  # noqa: ANN001
    _, path = saved
    shutil.copytree(path, tmp_path / "copy")
    Codebook.load(tmp_path / "copy", model_config=config("smollm2-135m"))
