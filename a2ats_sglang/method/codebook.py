"""The codebook directory: ``codebook.safetensors`` + ``codebook.json``.

Tensors (float32): ``centroids_z`` ``[layers, kv_heads, size, head_dim]`` (codewords in the
whitened space, as k-means produced them), ``chol`` and ``chol_inv`` ``[layers, kv_heads,
head_dim, head_dim]``. The JSON holds the format version, the model identity (architecture,
shape and a hash of the attention-relevant config), the RoPE spec, the serving defaults
(window, b, sinks) and a summary of the calibration data, plus the tensor file's SHA-256 so a
truncated or corrupted file is caught at load time rather than deep inside a kernel.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from a2ats_sglang.method.rope import RopeSpec, config_dict

FORMAT = "a2ats-codebook"
FORMAT_VERSION = 1
TENSOR_FILE = "codebook.safetensors"
META_FILE = "codebook.json"
KINDS = ("query_aware", "kmeans")


class CodebookError(ValueError):
    """A codebook directory that is missing, corrupt, or does not fit the model."""


@dataclass(frozen=True)
class ModelIdentity:
    """The attention-relevant part of a model config; what a codebook is tied to."""

    architecture: str
    model_type: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    rope: dict[str, Any]

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelIdentity:
        cfg = config_dict(config)
        if cfg.get("text_config"):
            cfg = config_dict(cfg["text_config"])
        heads = int(cfg["num_attention_heads"])
        return cls(
            architecture=(cfg.get("architectures") or ["?"])[0],
            model_type=str(cfg.get("model_type", "?")),
            num_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            hidden_size=int(cfg["hidden_size"]),
            rope=RopeSpec.from_hf_config(cfg).to_dict(),
        )

    @property
    def config_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def group_size(self) -> int:
        return self.num_attention_heads // self.num_kv_heads

    def mismatches(self, other: ModelIdentity) -> list[str]:
        """Human-readable differences, codebook (self) vs model (other)."""
        out = []
        for name, mine in asdict(self).items():
            theirs = getattr(other, name)
            if name == "rope":
                for key in sorted(set(mine) | set(theirs)):
                    a, b = mine.get(key), theirs.get(key)
                    same = (
                        math.isclose(a, b, rel_tol=1e-9)
                        if isinstance(a, float) and isinstance(b, (int, float))
                        else a == b
                    )
                    if not same:
                        out.append(f"rope.{key}: codebook {a!r}, model {b!r}")
            elif mine != theirs:
                out.append(f"{name}: codebook {mine!r}, model {theirs!r}")
        return out


@dataclass(frozen=True)
class CodebookMeta:
    model: ModelIdentity
    codebook_size: int
    kind: str = "query_aware"
    window: int = 64
    b: int = 2048
    sinks: int = 8
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_json(self, tensor_sha256: str) -> dict[str, Any]:
        out = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update(asdict(self))
        out["model"]["config_hash"] = self.model.config_hash
        out["tensors"] = {"file": TENSOR_FILE, "sha256": tensor_sha256}
        return out


@dataclass
class Codebook:
    """Codebooks of every (layer, kv_head), with their whitening factors."""

    meta: CodebookMeta
    centroids_z: torch.Tensor  # [layers, kv_heads, size, d] float32
    chol: torch.Tensor  # [layers, kv_heads, d, d] float32
    chol_inv: torch.Tensor  # [layers, kv_heads, d, d] float32

    def __post_init__(self) -> None:
        m = self.meta.model
        lhd = (m.num_layers, m.num_kv_heads)
        expected = {
            "centroids_z": (*lhd, self.meta.codebook_size, m.head_dim),
            "chol": (*lhd, m.head_dim, m.head_dim),
            "chol_inv": (*lhd, m.head_dim, m.head_dim),
        }
        for name, shape in expected.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise CodebookError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape}")
            if not bool(torch.isfinite(t).all()):
                raise CodebookError(f"tensor {name} holds non-finite values")
        if self.meta.kind not in KINDS:
            raise CodebookError(f"unknown codebook kind {self.meta.kind!r} (known: {KINDS})")
        if not 1 < self.meta.codebook_size <= 65536:
            raise CodebookError(f"codebook_size {self.meta.codebook_size} must be in (1, 65536]")

    @property
    def decoded(self) -> torch.Tensor:
        """Codewords in key space, ``c = c' L⁻¹``. # [layers, kv_heads, size, d] float32"""
        return self.centroids_z @ self.chol_inv

    def check_model(self, config: Any, codebook_size: int | None = None) -> None:
        """Raise :class:`CodebookError` naming every difference from ``config``."""
        problems = self.meta.model.mismatches(ModelIdentity.from_hf_config(config))
        if codebook_size is not None and codebook_size != self.meta.codebook_size:
            problems.append(f"codebook_size: codebook {self.meta.codebook_size}, requested {codebook_size}")
        if problems:
            raise CodebookError(
                f"codebook was calibrated for {self.meta.model.architecture} "
                f"({self.meta.model.num_layers} layers, hash {self.meta.model.config_hash}) and does "
                "not fit this model: " + "; ".join(problems)
            )

    @classmethod
    def random(cls, model: ModelIdentity, size: int, seed: int = 0, **meta: Any) -> Codebook:
        """Seeded random codewords and a random SPD whitening, for tests and for benchmarks on
        models with random (dummy) weights, where calibration would measure nothing."""
        g = torch.Generator().manual_seed(seed)
        lh = (model.num_layers, model.num_kv_heads)
        a = torch.randn(*lh, model.head_dim, model.head_dim, generator=g) / model.head_dim**0.5
        chol = torch.linalg.cholesky(a @ a.transpose(-1, -2) + torch.eye(model.head_dim))
        meta.setdefault("kind", "kmeans")
        meta.setdefault("calibration", {"random": True, "seed": seed})
        return cls(CodebookMeta(model, size, **meta), torch.randn(*lh, size, model.head_dim, generator=g),
                   chol, torch.linalg.inv(chol))

    # -- file format -----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            "centroids_z": self.centroids_z.float().contiguous().cpu(),
            "chol": self.chol.float().contiguous().cpu(),
            "chol_inv": self.chol_inv.float().contiguous().cpu(),
        }
        save_file(tensors, str(path / TENSOR_FILE))
        meta = self.meta.to_json(_sha256(path / TENSOR_FILE))
        (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls,
        directory: str | Path,
        model_config: Any | None = None,
        codebook_size: int | None = None,
        device: torch.device | str = "cpu",
    ) -> Codebook:
        """Load and validate; with ``model_config``, also check it fits that model."""
        path = Path(directory)
        meta_path, tensor_path = path / META_FILE, path / TENSOR_FILE
        if not path.is_dir():
            raise CodebookError(f"codebook directory {path} does not exist")
        for f in (meta_path, tensor_path):
            if not f.is_file():
                raise CodebookError(f"{path} is not a codebook directory: {f.name} is missing")
        try:
            raw = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CodebookError(f"{meta_path} is not valid JSON ({e}); the file is corrupt") from e
        meta = _parse_meta(raw, meta_path)
        digest = _sha256(tensor_path)
        if digest != raw["tensors"]["sha256"]:
            raise CodebookError(
                f"{tensor_path} is truncated or corrupt: SHA-256 {digest[:16]}… does not match "
                f"{raw['tensors']['sha256'][:16]}… recorded at calibration"
            )
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(tensor_path), device=str(device))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CodebookError(f"{tensor_path} cannot be read: {e}") from e
        missing = {"centroids_z", "chol", "chol_inv"} - set(tensors)
        if missing:
            raise CodebookError(f"{tensor_path} lacks tensors {sorted(missing)}")
        book = cls(meta, tensors["centroids_z"], tensors["chol"], tensors["chol_inv"])
        if model_config is not None or codebook_size is not None:
            if model_config is None:
                raise ValueError("codebook_size is checked together with model_config")
            book.check_model(model_config, codebook_size)
        return book


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _parse_meta(raw: Mapping[str, Any], where: Path) -> CodebookMeta:
    if raw.get("format") != FORMAT:
        raise CodebookError(f"{where} is not an A²ATS codebook (format {raw.get('format')!r})")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CodebookError(
            f"{where} has format version {version}; this a2ats-sglang reads version "
            f"{FORMAT_VERSION} (recalibrate with python -m a2ats_sglang.calibrate)"
        )
    try:
        model = dict(raw["model"])
        recorded_hash = model.pop("config_hash")
        identity = ModelIdentity(**model)
        meta = CodebookMeta(
            model=identity,
            codebook_size=int(raw["codebook_size"]),
            kind=str(raw["kind"]),
            window=int(raw["window"]),
            b=int(raw["b"]),
            sinks=int(raw["sinks"]),
            calibration=dict(raw.get("calibration", {})),
        )
        raw["tensors"]["sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise CodebookError(f"{where} is missing or has a malformed field: {e!r}") from e
    if recorded_hash != identity.config_hash:
        raise CodebookError(f"{where}: model fields were edited (config hash does not match)")
    return meta
