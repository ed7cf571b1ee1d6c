"""``python -m a2ats_sglang.calibrate``: build an A²ATS codebook for a model, once.

Runs the model over calibration text (yours, or the standard library's pydoc topics by
default) plus the paper's random-UUID segment, captures every layer's post-RoPE queries and
keys during ordinary forward passes, and fits one codebook per (layer, kv head). The result is
a directory to pass to ``launch_server --a2ats-codebook``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from a2ats_sglang.corpus import Document, pydoc_documents, read_documents, uuid_text
from a2ats_sglang.method.calibration import CalibrationSet, fit_codebook
from a2ats_sglang.method.codebook import KINDS, Codebook, CodebookError, ModelIdentity
from a2ats_sglang.method.rope import UnsupportedRopeError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DTYPES = ("bfloat16", "float16", "float32")  # --dtype: the model's dtype during capture


@dataclass
class CalibrationConfig:
    model_path: str
    data: Sequence[str] = ()
    text_field: str = "text"
    tokens: int = 65536
    uuid_tokens: int = 16384
    max_doc_tokens: int = 16384
    chunk_tokens: int = 4096
    codebook_size: int = 4096
    kind: str = "query_aware"
    b: int = 2048
    window: int = 64
    sinks: int = 8
    h_distances: Sequence[int] = ()
    iters: int = 100
    tol: float = 1e-4
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    # the model's dtype during capture; float32 is several times faster on CPUs without bf16 matmuls
    dtype: str = "bfloat16"
    memory_gb: float | None = None
    progress: bool = True
    extra_summary: dict = field(default_factory=dict)


def _model_config(model_path: str) -> dict:
    path = Path(model_path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{model_path} is not a Hugging Face checkpoint directory (no config.json)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {cfg.get('model_type')!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return cfg


class TimeEstimate(NamedTuple):
    """Seconds calibration takes on a device, measured on small runs (:func:`estimate_time`)."""

    capture_s: float  # the model's forward passes over the calibration tokens
    kmeans_s: float  # k-means++ and every Lloyd iteration up to --iters (an upper bound)

    @property
    def total_s(self) -> float:
        return self.capture_s + self.kmeans_s


def estimate_time(cfg: CalibrationConfig, model, tokenizer) -> TimeEstimate:  # noqa: ANN001
    """How long calibration takes on ``cfg.device``, from small runs of its own steps (a few
    seconds on 2 CPU cores): one forward pass over 512 tokens, scaled to the calibration tokens,
    and k-means on one (layer, kv head) pair at 1 and 3 Lloyd iterations, whose difference
    splits seeding from iterations; both scale with keys × codewords, then × pairs."""
    from a2ats_sglang.capture import run_document
    from a2ats_sglang.method.vq import kmeans

    keys = cfg.tokens + cfg.uuid_tokens
    ids = tokenizer(uuid_text(2048, cfg.seed), add_special_tokens=False).input_ids[:512]
    started = time.perf_counter()
    run_document(model, torch.tensor(ids), lambda *a: None, cfg.chunk_tokens)
    capture_s = (time.perf_counter() - started) * keys / len(ids)

    m = ModelIdentity.from_hf_config(model.config.to_dict())
    pairs = m.num_layers * m.num_kv_heads
    n, k, group = min(keys, 16384), min(cfg.codebook_size, 1024), min(pairs, 4)
    x = torch.randn(group, n, m.head_dim, device=cfg.device)
    # chunks of the length fit_codebook uses: its [pairs, chunk, k] temporaries outgrow the caches
    memory = _memory_budget(cfg)
    fit_group = max(1, min(pairs, memory // (16 * keys * m.head_dim)))
    chunk = max(64, min(keys, memory // 2 // (8 * fit_group * cfg.codebook_size)))
    budget = 8 * group * k * chunk

    def timed(iters: int) -> float:
        started = time.perf_counter()
        kmeans(x, k, iters, tol=0.0, memory_budget=budget)
        return time.perf_counter() - started

    one, three = timed(1), timed(3)
    per_iter = max(0.0, (three - one) / 2)
    seeding = max(0.0, one - per_iter)
    scale = pairs / group * (keys / n) * (cfg.codebook_size / k)
    return TimeEstimate(capture_s, scale * (seeding + per_iter * cfg.iters))


def _hours_or_minutes(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} hours"
    return "under a minute" if seconds < 60 else f"{round(seconds / 60)} minute" + ("s" if seconds >= 90 else "")


def warn_without_gpu(cfg: CalibrationConfig, model, tokenizer) -> None:  # noqa: ANN001
    """Calibrating on a CPU works but is slow: say how slow, measured on this machine."""
    if str(cfg.device).startswith("cuda"):
        return
    est = estimate_time(cfg, model, tokenizer)
    print(
        f"[calibrate] warning: no GPU, calibrating on the {cfg.device}: about {_hours_or_minutes(est.total_s)} here "
        f"(capture {_hours_or_minutes(est.capture_s)}, k-means up to --iters {cfg.iters} "
        f"{_hours_or_minutes(est.kmeans_s)}). A CUDA GPU takes a few minutes; lower --iters, --codebook-size "
        "or --tokens for a quick trial.",
        file=sys.stderr, flush=True,
    )


def _documents(cfg: CalibrationConfig) -> Iterable[Document]:
    return read_documents(cfg.data, cfg.text_field) if cfg.data else pydoc_documents("all")


def collect(
    cfg: CalibrationConfig, model=None, tokenizer=None, documents: Iterable[Document] | None = None  # noqa: ANN001
) -> tuple[CalibrationSet, dict]:
    """Capture keys and query moments over the calibration data (``documents`` overrides it)."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from a2ats_sglang.capture import load_model, run_document

    identity = ModelIdentity.from_hf_config(_model_config(cfg.model_path))
    if model is None:
        model = load_model(cfg.model_path, cfg.device, getattr(torch, cfg.dtype))
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(cfg.model_path)
    data = CalibrationSet(identity, cfg.b, cfg.device, cfg.h_distances)
    seen_layers: set[int] = set()

    def sink(layer: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        seen_layers.add(layer)
        data.add(layer, positions, q, k)

    def run(ids: list[int]) -> None:
        run_document(model, torch.tensor(ids), sink, cfg.chunk_tokens)
        if len(seen_layers) != identity.num_layers:
            raise RuntimeError(
                f"captured {len(seen_layers)} of {identity.num_layers} layers: this model's attention "
                "does not go through transformers' AttentionInterface"
            )

    sources: list[str] = []
    bar = tqdm(total=cfg.tokens + cfg.uuid_tokens, unit="tok", desc="capture", disable=not cfg.progress)
    text_tokens = 0
    for doc in documents if documents is not None else _documents(cfg):
        if text_tokens >= cfg.tokens:
            break
        ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        ids = ids[: min(cfg.max_doc_tokens, cfg.tokens - text_tokens)]
        if len(ids) < 16:
            continue
        run(ids)
        text_tokens += len(ids)
        sources.append(doc.source)
        bar.update(len(ids))
    uuid_tokens = 0
    if cfg.uuid_tokens:
        ids = tokenizer(uuid_text(cfg.uuid_tokens * 3, cfg.seed), add_special_tokens=False).input_ids
        for start in range(0, cfg.uuid_tokens, cfg.max_doc_tokens):
            part = ids[start : min(start + cfg.max_doc_tokens, cfg.uuid_tokens)]
            run(part)
            uuid_tokens += len(part)
            bar.update(len(part))
    bar.close()
    if text_tokens < cfg.tokens:
        print(f"[calibrate] note: the data held only {text_tokens} of {cfg.tokens} requested tokens", file=sys.stderr)
    summary = {
        "text_tokens": text_tokens,
        "uuid_tokens": uuid_tokens,
        "documents": len(sources),
        "sources": sources[:50] + ([f"... {len(sources) - 50} more"] if len(sources) > 50 else []),
        "data": list(cfg.data) or ["pydoc_data.topics"],
        "max_doc_tokens": cfg.max_doc_tokens,
        **cfg.extra_summary,
    }
    return data, summary


def _memory_budget(cfg: CalibrationConfig) -> int:
    if cfg.memory_gb is not None:
        return int(cfg.memory_gb * 2**30)
    if str(cfg.device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(cfg.device))
        return int(free * 0.5)
    return 2 << 30


def fit(cfg: CalibrationConfig, data: CalibrationSet, summary: dict, kind: str | None = None) -> Codebook:
    from tqdm.auto import tqdm

    pairs = data.model.num_layers * data.model.num_kv_heads
    bar = tqdm(total=pairs, unit="pair", desc=f"k-means ({kind or cfg.kind}, {cfg.codebook_size})", disable=not cfg.progress)

    def progress(done: int, total: int, iteration: int, shift: float) -> None:
        bar.n = done
        bar.set_postfix(iter=iteration, shift=f"{shift:.2e}")
        bar.refresh()

    book = fit_codebook(
        data, cfg.codebook_size, kind or cfg.kind, cfg.iters, cfg.tol, cfg.seed,
        _memory_budget(cfg), cfg.window, cfg.sinks, summary, progress,
    )
    bar.close()
    return book


def calibrate(cfg: CalibrationConfig, out: str | Path) -> Codebook:
    """Capture, fit and save; returns the codebook."""
    from transformers import AutoTokenizer

    from a2ats_sglang.capture import load_model

    started = time.time()
    ModelIdentity.from_hf_config(_model_config(cfg.model_path))  # an unsupported model is refused before it loads
    model = load_model(cfg.model_path, cfg.device, getattr(torch, cfg.dtype))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    warn_without_gpu(cfg, model, tokenizer)
    data, summary = collect(cfg, model, tokenizer)
    book = fit(cfg, data, {**summary, "seconds_capture": round(time.time() - started, 1)})
    book.meta.calibration["seconds_total"] = round(time.time() - started, 1)
    book.save(out)
    return book


def build_parser() -> argparse.ArgumentParser:
    d = CalibrationConfig(model_path="")
    p = argparse.ArgumentParser(
        prog="python -m a2ats_sglang.calibrate",
        description="Calibrate an A²ATS query-aware codebook (one per layer and kv head) for a "
        "Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint. Run once per model; pass the "
        "output directory to launch_server --a2ats-codebook.",
    )
    add = p.add_argument
    add("--model-path", metavar="DIR", default=None, help="HF checkpoint directory. Default: the embedded SmolLM2-135M-Instruct")
    add("--out", metavar="DIR", required=True, help="output codebook directory")
    add("--data", metavar="PATH", nargs="*", default=[],
        help=".txt/.md, .jsonl or .parquet files or directories. Default: the standard library's pydoc topics")
    add("--text-field", metavar="NAME", default=d.text_field, help="JSON field / parquet column holding the text. Default: %(default)s")
    add("--tokens", metavar="N", type=int, default=d.tokens, help="natural-text tokens to calibrate on. Default: %(default)s")
    add("--uuid-tokens", metavar="N", type=int, default=d.uuid_tokens,
        help="tokens of random UUIDs added (the paper's retrieval segment); 0 disables. Default: %(default)s")
    add("--max-doc-tokens", metavar="N", type=int, default=d.max_doc_tokens, help="truncate each document to N tokens. Default: %(default)s")
    add("--chunk-tokens", metavar="N", type=int, default=d.chunk_tokens, help="prefill chunk size during capture. Default: %(default)s")
    add("--codebook-size", metavar="K", type=int, default=d.codebook_size,
        help="codewords per (layer, kv head), at most 65536. Default: %(default)s")
    add("--kind", choices=KINDS, default=d.kind, help="query_aware (A²ATS) or kmeans (plain VQ, the ablation). Default: %(default)s")
    add("--b", type=int, default=d.b, help="WRoPE distance the query statistics are taken at. Default: %(default)s")
    h = p.add_mutually_exclusive_group()
    h.add_argument("--h-distances", metavar="D", type=int, nargs="+", default=None,
                   help="pool the query statistics over these WRoPE distances. Default: --b only, as the paper")
    h.add_argument("--h-buckets", type=int, default=None, metavar="CONTEXT",
                   help="pool them over the log2 distance buckets' representatives up to CONTEXT (bucketed scoring)")
    add("--window", metavar="W", type=int, default=d.window, help="local window recorded as the serving default. Default: %(default)s")
    add("--sinks", metavar="S", type=int, default=d.sinks, help="attention sinks recorded as the serving default. Default: %(default)s")
    add("--iters", metavar="N", type=int, default=d.iters, help="maximum Lloyd iterations. Default: %(default)s")
    add("--tol", type=float, default=d.tol, help="stop when centroids move less than this. Default: %(default)s")
    add("--seed", type=int, default=d.seed, help="seed of k-means++ and the UUID text. Default: %(default)s")
    add("--device", default=None, help="torch device for the model and k-means. Default: cuda when a GPU is visible, else cpu")
    add("--dtype", choices=DTYPES, default=d.dtype,
        help="model dtype during capture (keys are kept in float32 either way); float32 is faster on CPUs "
        "without bf16 matmuls. Default: %(default)s")
    add("--memory-gb", metavar="GB", type=float, default=None,
        help="memory budget for k-means. Default: half the free GPU memory, 2 GiB on a CPU")
    add("--force", action="store_true", help="overwrite an existing codebook in --out")
    return p


def _validate(args: argparse.Namespace) -> None:
    if args.tokens <= 0 or args.uuid_tokens < 0:
        raise ValueError("--tokens must be positive and --uuid-tokens non-negative")
    if not 1 < args.codebook_size <= 65536:
        raise ValueError(f"--codebook-size {args.codebook_size} must be in (1, 65536] (codes are uint16)")
    if args.tokens + args.uuid_tokens < args.codebook_size:
        raise ValueError(f"{args.tokens + args.uuid_tokens} calibration tokens cannot fit {args.codebook_size} codewords")
    if args.b <= args.window:
        raise ValueError(f"--b ({args.b}) must exceed --window ({args.window}): far tokens are at least a window away")
    if args.h_distances and min(args.h_distances) <= args.window:
        raise ValueError(f"--h-distances must exceed --window ({args.window})")
    out = Path(args.out)
    if (out / "codebook.json").exists() and not args.force:
        raise FileExistsError(f"{out} already holds a codebook (use --force to overwrite)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _validate(args)
        if args.h_buckets:
            from a2ats_sglang.method.wrope import DistanceBuckets

            args.h_distances = list(DistanceBuckets.log2(args.window, args.h_buckets).representatives)
        if args.model_path is None:
            from a2ats_sglang.default_model import smollm2_path

            args.model_path = str(smollm2_path())
        cfg = CalibrationConfig(
            model_path=args.model_path, data=args.data, text_field=args.text_field, tokens=args.tokens,
            uuid_tokens=args.uuid_tokens, max_doc_tokens=args.max_doc_tokens, chunk_tokens=args.chunk_tokens,
            codebook_size=args.codebook_size, kind=args.kind, b=args.b, window=args.window, sinks=args.sinks,
            h_distances=args.h_distances or (), iters=args.iters, tol=args.tol, seed=args.seed,
            device=args.device or CalibrationConfig.device, dtype=args.dtype, memory_gb=args.memory_gb,
        )
        book = calibrate(cfg, args.out)
    except (CodebookError, UnsupportedRopeError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"a2ats_sglang.calibrate: error: {e}", file=sys.stderr)
        return 1
    c = book.meta.calibration
    print(
        f"[calibrate] wrote {args.out}: {book.meta.kind} codebook, {book.meta.codebook_size} codewords × "
        f"{book.meta.model.num_layers} layers × {book.meta.model.num_kv_heads} kv heads, "
        f"{c['keys_per_head']} keys per head, {c['seconds_total']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
