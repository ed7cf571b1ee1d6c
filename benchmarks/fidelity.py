"""How well does each selector find the tokens exact attention needs? On real queries and keys.

Calibrates codebooks (query-aware A²ATS and plain k-means) on the calibration split of the
standard library's pydoc topics, then runs SmolLM2-135M-Instruct over held-out ~7K-token texts,
captures every layer's post-RoPE q/k/v, and for decode queries near the end of each text
compares token selectors at several budgets:

- attention-mass recall: the exact attention probability mass inside the selected set;
- output error: ‖o_sparse − o_dense‖ / ‖o_dense‖ of attention over the set vs dense attention.

Every selector gets the same sinks and local window and ``K = ⌈budget·length⌉`` more tokens
per (query, kv head); ``a2ats_union`` (the paper's per-query-head top-K, unioned over the GQA
group) may select up to ``group·K`` and its actual size is reported.

    python -m benchmarks.fidelity            # on a GPU: ~2 minutes for SmolLM2, codebook 4096
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from a2ats_sglang.calibrate import CalibrationConfig, collect, fit
from a2ats_sglang.capture import load_model, run_document
from a2ats_sglang.corpus import pydoc_documents
from a2ats_sglang.default_model import cache_dir, smollm2_path
from a2ats_sglang.method.codebook import Codebook, CodebookError
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.scores import (
    code_logits,
    exact_probs,
    quest_page_bounds,
    wrope_key_logits,
)
from a2ats_sglang.method.selection import (
    attention_recall,
    budget_tokens,
    protected_mask,
    select_per_kv_head,
    select_union,
    sparse_attention,
)
from a2ats_sglang.method.vq import encode
from benchmarks.meta import run_meta

SELECTORS = {
    "oracle": "exact top-K by the group's mean attention probability (upper bound)",
    "a2ats": "A²ATS serving selector: query-aware VQ + WRoPE, ranked by max logit over the group",
    "a2ats_norm": "as a2ats, ranked by max approximate log-probability over the group",
    "a2ats_union": "paper: per-query-head top-K from query-aware VQ + WRoPE, unioned over the group",
    "kmeans": "plain k-means VQ (H = I) + WRoPE, serving selector",
    "wrope_exact_keys": "WRoPE with unquantized pre-RoPE keys (ceiling of any codebook)",
    "quest": "Quest: page (16) min/max upper bounds on post-RoPE keys",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-path", default=None, help="HF checkpoint (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--codebook-size", type=int, default=4096)
    p.add_argument("--cal-tokens", type=int, default=65536, help="natural-text calibration tokens (pydoc calibration split)")
    p.add_argument("--uuid-tokens", type=int, default=16384)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--eval-len", type=int, default=7168, help="tokens per held-out evaluation text")
    p.add_argument("--num-seqs", type=int, default=4, help="held-out texts")
    p.add_argument("--queries", type=int, default=32, help="decode queries per text, spread over its last quarter")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.10])
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--sinks", type=int, default=8)
    p.add_argument("--b", type=int, default=2048)
    p.add_argument("--quest-page", type=int, default=16)
    p.add_argument("--h-distances", type=int, nargs="+", default=None,
                   help="pool the query-aware H over these WRoPE distances (default: b only)")
    p.add_argument("--codebook-dir", default=None, help="reuse/store the fitted codebooks here")
    p.add_argument("--out", default="benchmarks/results/fidelity.json")
    p.add_argument("--plot", default="benchmarks/results/fidelity.png")
    return p


def codebooks(args: argparse.Namespace, model, tokenizer) -> dict[str, Codebook]:  # noqa: ANN001
    root = Path(args.codebook_dir or cache_dir() / "fidelity")
    common = f"{Path(args.model_path).name}-{args.codebook_size}-{args.cal_tokens}-{args.uuid_tokens}-{args.iters}-b{args.b}"
    h = "-h" + "_".join(map(str, args.h_distances)) if args.h_distances else ""
    dirs = {"query_aware": root / f"query_aware-{common}{h}", "kmeans": root / f"kmeans-{common}"}
    cfg = CalibrationConfig(
        model_path=args.model_path, tokens=args.cal_tokens, uuid_tokens=args.uuid_tokens,
        codebook_size=args.codebook_size, iters=args.iters, b=args.b, window=args.window, sinks=args.sinks,
        h_distances=args.h_distances or (), device=args.device,
        extra_summary={"data": ["pydoc_data.topics (calibration split)"]},
    )
    books: dict[str, Codebook] = {}
    for kind, path in dirs.items():
        try:
            books[kind] = Codebook.load(path, model_config=model.config, codebook_size=args.codebook_size)
        except CodebookError:
            pass
    if len(books) < len(dirs):
        data, summary = collect(cfg, model, tokenizer, pydoc_documents("calibration"))
        for kind in dirs.keys() - books.keys():
            started = time.time()
            books[kind] = fit(cfg, data, summary, kind)
            books[kind].meta.calibration["seconds_fit"] = round(time.time() - started, 1)
            books[kind].save(dirs[kind])
        del data
    return books


def eval_sequences(tokenizer, length: int, count: int) -> list[torch.Tensor]:  # noqa: ANN001
    """Held-out pydoc text, concatenated and cut into ``count`` pieces of ``length`` tokens."""
    text = "\n\n".join(d.text for d in pydoc_documents("heldout"))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < length * count:
        raise ValueError(f"held-out text has {len(ids)} tokens, fewer than {count} × {length}")
    return [torch.tensor(ids[i * length : (i + 1) * length]) for i in range(count)]


class Totals:
    """Sums of per-(selector, budget, layer) metrics over queries and texts."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, float, int], torch.Tensor] = defaultdict(lambda: torch.zeros(3, dtype=torch.float64))
        self.counts: dict[tuple[str, float, int], int] = defaultdict(int)
        self.diag: dict[str, list[float]] = defaultdict(list)

    def add(self, key: tuple[str, float, int], recall: torch.Tensor, err: torch.Tensor, frac: torch.Tensor) -> None:
        self.sums[key] += torch.stack([recall.sum(), err.sum(), frac.sum()]).double().cpu()
        self.counts[key] += recall.numel()

    def mean(self, key: tuple[str, float, int]) -> list[float]:
        return (self.sums[key] / self.counts[key]).tolist()


def evaluate_layer(
    totals: Totals, layer: int, q: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    books: dict[str, Codebook], decoded: dict[str, torch.Tensor], spec: RopeSpec, args: argparse.Namespace,
) -> None:
    """``q`` ``[B, Hq, d]`` at positions ``pos``; ``k``/``v`` ``[S, Hkv, d]`` post-RoPE."""
    seq_len, kv_heads, dim = k.shape
    scale = dim**-0.5
    lengths = pos + 1
    probs = exact_probs(q, k, lengths, scale)
    dense = sparse_attention(q, k, v, (torch.arange(seq_len, device=k.device) < lengths[:, None])[:, None].expand(-1, kv_heads, -1), scale)
    q_w = spec.wrope_query(q.float(), pos, args.b)
    k_pre = spec.unrotate(k.float(), torch.arange(seq_len, device=k.device))
    logits = {"wrope_exact_keys": wrope_key_logits(q_w, k_pre, scale), "quest": quest_page_bounds(q, k, args.quest_page, scale)}
    for kind, name in (("query_aware", "a2ats"), ("kmeans", "kmeans")):
        codes = encode(k_pre.transpose(0, 1), books[kind].chol[layer], books[kind].centroids_z[layer]).t()
        logits[name] = code_logits(q_w, codes, decoded[kind][layer], scale)
    exact = torch.log(probs.clamp_min(1e-30))  # log-probabilities; compare approx logits up to a per-head shift
    far = ~protected_mask(lengths, seq_len, args.sinks, args.window) & (torch.arange(seq_len, device=k.device) < lengths[:, None])
    for name in ("a2ats", "kmeans", "wrope_exact_keys"):
        totals.diag[f"score_corr/{name}"].append(_masked_corr(logits[name], exact, far))
    for name in ("a2ats", "kmeans"):
        totals.diag[f"score_corr_vs_wrope_exact/{name}"].append(_masked_corr(logits[name], logits["wrope_exact_keys"], far))
    # quantizer alone: the share of WRoPE attention (softmax of WRoPE exact-key logits over the
    # far tokens) that a selection keeps among the far tokens
    wrope_probs = logits["wrope_exact_keys"].masked_fill(~far[:, None, :], float("-inf")).softmax(-1)
    for ratio in args.budgets:
        budget = budget_tokens(lengths, ratio)
        common = dict(lengths=lengths, budget=budget, num_kv_heads=kv_heads, sinks=args.sinks, window=args.window)
        masks = {
            "oracle": select_per_kv_head(probs, reduce="mean", **common),
            "a2ats": select_per_kv_head(logits["a2ats"], **common),
            "a2ats_norm": select_per_kv_head(logits["a2ats"], normalize=True, **common),
            "a2ats_union": select_union(logits["a2ats"], **common),
            "kmeans": select_per_kv_head(logits["kmeans"], **common),
            "wrope_exact_keys": select_per_kv_head(logits["wrope_exact_keys"], **common),
            "quest": select_per_kv_head(logits["quest"], page_size=args.quest_page, **common),
        }
        for name, mask in masks.items():
            recall = attention_recall(probs, mask)
            out = sparse_attention(q, k, v, mask, scale)
            err = (out - dense).norm(dim=-1) / dense.norm(dim=-1).clamp_min(1e-12)
            group = q.shape[1] // kv_heads
            frac = (mask.sum(-1).double() / lengths[:, None]).repeat_interleave(group, dim=1)  # [B, Hq]
            totals.add((name, ratio, layer), recall, err, frac)
            if name in ("a2ats", "kmeans", "wrope_exact_keys"):
                totals.diag[f"wrope_attention_recall/{name}@{ratio:g}"].append(float(attention_recall(wrope_probs, mask).mean()))


def _masked_corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over (query, head) of the Pearson correlation of two score rows on ``mask``."""
    m = mask[:, None, :].expand_as(a).float()
    n = m.sum(-1).clamp_min(1)
    am = (a * m).sum(-1, keepdim=True) / n[..., None]
    bm = (b.masked_fill(m == 0, 0) * m).sum(-1, keepdim=True) / n[..., None]
    da, db = (a - am) * m, (b.masked_fill(m == 0, 0) - bm) * m
    corr = (da * db).sum(-1) / (da.square().sum(-1).sqrt() * db.square().sum(-1).sqrt()).clamp_min(1e-12)
    return float(corr.mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    args.model_path = args.model_path or str(smollm2_path())
    model = load_model(args.model_path, args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    spec = RopeSpec.from_hf_config(model.config)
    books = codebooks(args, model, tokenizer)
    decoded = {kind: book.decoded.to(args.device) for kind, book in books.items()}
    for book in books.values():
        for name in ("chol", "centroids_z"):
            setattr(book, name, getattr(book, name).to(args.device))
    seqs = eval_sequences(tokenizer, args.eval_len, args.num_seqs)
    totals = Totals()
    started = time.time()
    qpos = torch.linspace(args.eval_len * 3 // 4, args.eval_len - 1, args.queries).round().long().unique().to(args.device)
    for i, ids in enumerate(seqs):
        captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

        def sink(layer: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
            captured[layer] = (q[qpos].clone(), k.clone(), v.clone())

        run_document(model, ids, sink, chunk_tokens=args.eval_len)
        for layer, (q, k, v) in sorted(captured.items()):
            evaluate_layer(totals, layer, q, qpos, k, v, books, decoded, spec, args)
        print(f"[fidelity] text {i + 1}/{len(seqs)} done ({time.time() - started:.0f} s)", file=sys.stderr)
    layers = model.config.num_hidden_layers
    results: dict[str, Any] = {}
    per_layer: dict[str, Any] = {}
    for name in SELECTORS:
        results[name] = {}
        for ratio in args.budgets:
            rows = torch.tensor([totals.mean((name, ratio, layer)) for layer in range(layers)])
            recall, err, frac = rows.mean(0).tolist()
            results[name][f"{ratio:g}"] = {"recall": round(recall, 4), "output_rel_error": round(err, 4), "selected_fraction": round(frac, 4)}
            if math.isclose(ratio, 0.03):
                per_layer[name] = [round(x, 4) for x in rows[:, 0].tolist()]
    cal = books["query_aware"].meta.calibration
    workload = {
        "calibration": {k: cal.get(k) for k in ("data", "text_tokens", "uuid_tokens", "documents", "keys_per_head")},
        "codebook_size": args.codebook_size, "kmeans_max_iters": args.iters,
        "evaluation": f"{args.num_seqs} held-out pydoc texts × {args.eval_len} tokens, {len(qpos)} decode queries each over positions {int(qpos[0])}..{int(qpos[-1])}, all {layers} layers",
        "window": args.window, "sinks": args.sinks, "b": args.b, "quest_page": args.quest_page,
        "h_distances": args.h_distances or [args.b],
        "budget_rule": "K = ceil(budget * length) tokens per (query, kv head) besides sinks and window",
    }
    return {
        "meta": run_meta(args.device, f"SmolLM2-135M-Instruct ({args.model_path})" if "SmolLM2" in args.model_path else args.model_path, workload),
        "selectors": SELECTORS,
        "results": results,
        "per_layer_recall_at_3pct": per_layer,
        "diagnostics": {
            "score_correlation": {k: round(sum(v) / len(v), 4) for k, v in sorted(totals.diag.items())},
            "note": "score_corr: Pearson correlation over far tokens between approximate logits and exact "
                    "log-probabilities; score_corr_vs_wrope_exact: against WRoPE logits with exact keys (the quantizer "
                    "alone); wrope_attention_recall: share of the far tokens' WRoPE-attention mass a selection keeps "
                    "(the quantizer alone, selection-level)",
            "seconds_fit": {k: b.meta.calibration.get("seconds_fit") for k, b in books.items()},
        },
    }


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in report["results"].items():
        x = [100 * float(b) for b in rows]
        style = "--" if name in ("oracle", "wrope_exact_keys") else "-"
        ax1.plot(x, [r["recall"] for r in rows.values()], style, marker="o", label=name)
        ax2.plot(x, [r["output_rel_error"] for r in rows.values()], style, marker="o", label=name)
    ax1.set(xlabel="budget K (% of context)", ylabel="attention-mass recall", title="Recall (higher is better)")
    ax2.set(xlabel="budget K (% of context)", ylabel="‖o − o_dense‖ / ‖o_dense‖", title="Output error (lower is better)", yscale="log")
    ax1.legend(fontsize=8)
    fig.suptitle(f"{report['meta']['model'].split(' (')[0]} on {report['meta']['device']}: {report['meta']['workload']['evaluation']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(report: dict[str, Any]) -> str:
    budgets = list(next(iter(report["results"].values())))
    head = "| selector | " + " | ".join(f"{100 * float(b):g} %" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for name, rows in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['recall']:.3f} / {r['output_rel_error']:.3f}" for r in rows.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)
    print("recall / output error\n" + markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
