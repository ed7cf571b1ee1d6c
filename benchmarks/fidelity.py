"""How well does each selector find the tokens exact attention needs? On real queries and keys.

Calibrates codebooks (query-aware A²ATS with H taken at b, query-aware with H pooled over the
distance buckets' representatives, and plain k-means) on the calibration split of the standard
library's pydoc topics, then runs SmolLM2-135M-Instruct over held-out ~7K-token texts, captures
every layer's post-RoPE q/k/v, and for decode queries near the end of each text compares token
selectors at several budgets:

- attention-mass recall: the exact attention probability mass inside the selected set;
- output error: ‖o_sparse − o_dense‖ / ‖o_dense‖ of attention over the set vs dense attention.

Every selector gets the same sinks and local window and ``K = ⌈budget·length⌉`` more tokens
per (query, kv head); ``a2ats_union`` (the paper's per-query-head top-K, unioned over the GQA
group) may select up to ``group·K`` and its actual size is reported. Far tokens are scored with
the paper's single-distance WRoPE, or with log-spaced distance buckets (``*_bucketed``). A
second evaluation places the same texts ``--shift`` positions later, beyond every calibration
position, to show the scores are position-free.

    python -m benchmarks.fidelity            # on a GPU: ~4 minutes for SmolLM2, codebook 4096
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

from a2ats_sglang.calibrate import DTYPES, CalibrationConfig, collect, fit
from a2ats_sglang.capture import load_model, run_document
from a2ats_sglang.corpus import pydoc_documents
from a2ats_sglang.default_model import cache_dir, smollm2_path
from a2ats_sglang.method.codebook import Codebook, CodebookError
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.scores import causal_mask, exact_logits, quest_page_bounds
from a2ats_sglang.method.selection import (
    attention_recall,
    budget_tokens,
    masked_attention,
    protected_mask,
    select_per_kv_head,
    select_union,
)
from a2ats_sglang.method.vq import encode
from a2ats_sglang.method.wrope import DistanceBuckets, wrope_code_logits, wrope_logits
from benchmarks.meta import run_meta

SELECTORS = {
    "oracle": "exact top-K by the group's mean attention probability (upper bound)",
    "a2ats": "A²ATS serving selector: query-aware VQ + WRoPE at b, ranked by max logit over the group",
    "a2ats_norm": "as a2ats, ranked by max approximate log-probability over the group",
    "a2ats_union": "paper: per-query-head top-K from query-aware VQ + WRoPE, unioned over the group",
    "kmeans": "plain k-means VQ (H = I) + WRoPE at b, serving selector",
    "wrope_exact_keys": "WRoPE at b with unquantized pre-RoPE keys (ceiling of any codebook)",
    "a2ats_bucketed": "query-aware VQ (H at b) + distance-bucketed WRoPE, serving selector",
    "a2ats_bucketed_hb": "query-aware VQ with H pooled over the buckets + bucketed WRoPE, serving selector",
    "kmeans_bucketed": "plain k-means VQ + bucketed WRoPE, serving selector",
    "wrope_bucketed_exact_keys": "bucketed WRoPE with unquantized keys (ceiling of any codebook)",
    "quest": "Quest: page (16) min/max upper bounds on post-RoPE keys",
}
# approximate logits behind each ranked selector: (codebook or None for exact keys, WRoPE mode)
SCORES = {
    "a2ats": ("query_aware", "single"),
    "kmeans": ("kmeans", "single"),
    "wrope_exact_keys": (None, "single"),
    "a2ats_bucketed": ("query_aware", "bucketed"),
    "a2ats_bucketed_hb": ("query_aware_hb", "bucketed"),
    "kmeans_bucketed": ("kmeans", "bucketed"),
    "wrope_bucketed_exact_keys": (None, "bucketed"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-path", default=None, help="HF checkpoint (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="model dtype for calibration and evaluation (float32 is faster on CPUs without bf16 matmuls)")
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
    p.add_argument("--b", type=int, default=2048, help="the paper's single WRoPE distance")
    p.add_argument("--shift", type=int, default=None,
                   help="second evaluation with the texts placed this many positions later (default: --eval-len; 0: skip)")
    p.add_argument("--quest-page", type=int, default=16)
    p.add_argument("--codebook-dir", default=None, help="reuse/store the fitted codebooks here")
    p.add_argument("--out", default="benchmarks/results/fidelity.json")
    p.add_argument("--plot", default="benchmarks/results/fidelity.png")
    return p


def codebooks(args: argparse.Namespace, model, tokenizer, buckets: DistanceBuckets) -> dict[str, Codebook]:  # noqa: ANN001
    """The three codebooks, fitted once and cached by their settings."""
    root = Path(args.codebook_dir or cache_dir() / "fidelity")
    common = f"{Path(args.model_path).name}-{args.codebook_size}-{args.cal_tokens}-{args.uuid_tokens}-{args.iters}-b{args.b}"
    common += "" if args.dtype == "bfloat16" else f"-{args.dtype}"  # bf16 books keep their earlier names
    pooled = tuple(buckets.representatives)
    plans = {  # name: (kind, H distances, directory); those sharing H distances next to each other
        "query_aware": ("query_aware", (), root / f"query_aware-{common}"),
        "kmeans": ("kmeans", (), root / f"kmeans-{common}"),
        "query_aware_hb": ("query_aware", pooled, root / f"query_aware-{common}-h{'_'.join(map(str, pooled))}"),
    }
    books: dict[str, Codebook] = {}
    captured: dict[tuple[int, ...], tuple] = {}
    for name, (kind, h_distances, path) in plans.items():
        try:
            books[name] = Codebook.load(path, model_config=model.config, codebook_size=args.codebook_size)
            continue
        except CodebookError:
            pass
        cfg = CalibrationConfig(
            model_path=args.model_path, tokens=args.cal_tokens, uuid_tokens=args.uuid_tokens,
            codebook_size=args.codebook_size, iters=args.iters, b=args.b, window=args.window, sinks=args.sinks,
            h_distances=h_distances, device=args.device, dtype=args.dtype,
            extra_summary={"data": ["pydoc_data.topics (calibration split)"]},
        )
        if h_distances not in captured:  # H depends on the distances; the keys do not
            captured.clear()
            captured[h_distances] = collect(cfg, model, tokenizer, pydoc_documents("calibration"))
        started = time.time()
        books[name] = fit(cfg, *captured[h_distances], kind)
        books[name].meta.calibration["seconds_fit"] = round(time.time() - started, 1)
        books[name].save(path)
    return books


def eval_sequences(tokenizer, length: int, count: int) -> list[torch.Tensor]:  # noqa: ANN001
    """Held-out pydoc text, concatenated and cut into ``count`` pieces of ``length`` tokens."""
    text = "\n\n".join(d.text for d in pydoc_documents("heldout"))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < length * count:
        raise ValueError(f"held-out text has {len(ids)} tokens, fewer than {count} × {length}")
    return [torch.tensor(ids[i * length : (i + 1) * length]) for i in range(count)]


class Totals:
    """Sums of per-(evaluation, selector, budget, layer) metrics over queries and texts."""

    def __init__(self) -> None:
        self.sums: dict[tuple, torch.Tensor] = defaultdict(lambda: torch.zeros(3, dtype=torch.float64))
        self.counts: dict[tuple, int] = defaultdict(int)
        self.diag: dict[str, list[float]] = defaultdict(list)

    def add(self, key: tuple, recall: torch.Tensor, err: torch.Tensor, frac: torch.Tensor) -> None:
        self.sums[key] += torch.stack([recall.sum(), err.sum(), frac.sum()]).double().cpu()
        self.counts[key] += recall.numel()

    def mean(self, key: tuple) -> list[float]:
        return (self.sums[key] / self.counts[key]).tolist()


class Scorer:
    """Everything one layer's evaluation needs besides the captured tensors."""

    def __init__(self, books: dict[str, Codebook], rope: RopeSpec, buckets: DistanceBuckets, args: argparse.Namespace) -> None:
        self.books, self.rope, self.args = books, rope, args
        self.modes = {"single": DistanceBuckets.single(args.window, args.b), "bucketed": buckets}
        self.decoded = {name: book.decoded.to(args.device) for name, book in books.items()}
        self.chol = {name: book.chol.to(args.device) for name, book in books.items()}
        self.centroids = {name: book.centroids_z.to(args.device) for name, book in books.items()}

    def logits(self, layer: int, q: torch.Tensor, pos: torch.Tensor, k_pre: torch.Tensor, start: int, scale: float) -> dict[str, torch.Tensor]:
        codes = {
            name: encode(k_pre.transpose(0, 1), self.chol[name][layer], self.centroids[name][layer]).t()
            for name in self.books
        }
        out = {}
        for name, (book, mode) in SCORES.items():
            buckets = self.modes[mode]
            if book is None:
                out[name] = wrope_logits(q, pos, k_pre, self.rope, buckets, scale, start)
            else:
                out[name] = wrope_code_logits(q, pos, codes[book], self.decoded[book][layer], self.rope, buckets, scale, start)
        return out


def evaluate_layer(
    totals: Totals, tag: str, layer: int, q: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    start: int, scorer: Scorer,
) -> None:
    """``q`` ``[B, Hq, d]`` at absolute positions ``pos``; ``k``/``v`` ``[S, Hkv, d]`` post-RoPE at ``start + j``."""
    args = scorer.args
    seq_len, kv_heads, dim = k.shape
    scale = dim**-0.5
    lengths = pos - start + 1
    visible = causal_mask(lengths, seq_len)
    true_logits = exact_logits(q, k, scale)  # shared by every selection below
    probs = true_logits.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1)
    dense = masked_attention(true_logits, v, visible[:, None].expand(-1, kv_heads, -1))
    k_pre = scorer.rope.unrotate(k.float(), start + torch.arange(seq_len, device=k.device))
    logits = scorer.logits(layer, q, pos, k_pre, start, scale)
    far = ~protected_mask(lengths, seq_len, args.sinks, args.window) & visible
    ceiling = {name: ("wrope_bucketed_exact_keys" if mode == "bucketed" else "wrope_exact_keys") for name, (_, mode) in SCORES.items()}
    # the quantizer alone: WRoPE attention with exact keys, over the far tokens
    wrope_probs = {c: logits[c].masked_fill(~far[:, None, :], float("-inf")).softmax(-1) for c in set(ceiling.values())}
    if tag == "base":
        log_probs = torch.log(probs.clamp_min(1e-30))  # approx logits are compared up to a per-head shift
        for name, x in logits.items():
            totals.diag[f"score_corr/{name}"].append(_masked_corr(x, log_probs, far))
            if name != ceiling[name]:
                totals.diag[f"score_corr_vs_exact_keys/{name}"].append(_masked_corr(x, logits[ceiling[name]], far))
    for ratio in args.budgets:
        common = dict(lengths=lengths, budget=budget_tokens(lengths, ratio), num_kv_heads=kv_heads, sinks=args.sinks, window=args.window)
        masks = {name: select_per_kv_head(x, **common) for name, x in logits.items()}
        masks["oracle"] = select_per_kv_head(probs, reduce="mean", **common)
        masks["a2ats_norm"] = select_per_kv_head(logits["a2ats"], normalize=True, **common)
        masks["a2ats_union"] = select_union(logits["a2ats"], **common)
        masks["quest"] = select_per_kv_head(quest_page_bounds(q, k, args.quest_page, scale), page_size=args.quest_page, **common)
        group = q.shape[1] // kv_heads
        for name, mask in masks.items():
            out = masked_attention(true_logits, v, mask)
            err = (out - dense).norm(dim=-1) / dense.norm(dim=-1).clamp_min(1e-12)
            frac = (mask.sum(-1).double() / lengths[:, None]).repeat_interleave(group, dim=1)  # [B, Hq]
            totals.add((tag, name, ratio, layer), attention_recall(probs, mask), err, frac)
            if tag == "base" and name in SCORES:
                kept = attention_recall(wrope_probs[ceiling[name]], mask)
                totals.diag[f"wrope_attention_recall/{name}@{ratio:g}"].append(float(kept.mean()))


def _masked_corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over (query, head) of the Pearson correlation of two score rows on ``mask``."""
    m = mask[:, None, :].expand_as(a).float()
    n = m.sum(-1).clamp_min(1)
    a, b = a.masked_fill(m == 0, 0), b.masked_fill(m == 0, 0)
    da = (a - (a * m).sum(-1, keepdim=True) / n[..., None]) * m
    db = (b - (b * m).sum(-1, keepdim=True) / n[..., None]) * m
    corr = (da * db).sum(-1) / (da.square().sum(-1).sqrt() * db.square().sum(-1).sqrt()).clamp_min(1e-12)
    return float(corr.mean())


def _summarise(totals: Totals, tag: str, args: argparse.Namespace, layers: int) -> tuple[dict, dict]:
    results: dict[str, Any] = {}
    per_layer: dict[str, Any] = {}
    for name in SELECTORS:
        results[name] = {}
        for ratio in args.budgets:
            rows = torch.tensor([totals.mean((tag, name, ratio, layer)) for layer in range(layers)])
            recall, err, frac = rows.mean(0).tolist()
            results[name][f"{ratio:g}"] = {"recall": round(recall, 4), "output_rel_error": round(err, 4), "selected_fraction": round(frac, 4)}
            if math.isclose(ratio, 0.03):
                per_layer[name] = [round(x, 4) for x in rows[:, 0].tolist()]
    return results, per_layer


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    args.model_path = args.model_path or str(smollm2_path())
    shift = args.eval_len if args.shift is None else args.shift
    model = load_model(args.model_path, args.device, getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    rope = RopeSpec.from_hf_config(model.config)
    buckets = DistanceBuckets.log2(args.window, args.eval_len)
    scorer = Scorer(codebooks(args, model, tokenizer, buckets), rope, buckets, args)
    seqs = eval_sequences(tokenizer, args.eval_len, args.num_seqs)
    totals = Totals()
    started = time.time()
    qidx = torch.linspace(args.eval_len * 3 // 4, args.eval_len - 1, args.queries).round().long().unique().to(args.device)
    evaluations = {"base": 0, **({"shifted": shift} if shift else {})}
    for tag, start in evaluations.items():
        for i, ids in enumerate(seqs):
            captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

            def sink(layer: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
                captured[layer] = (q[qidx].clone(), k.clone(), v.clone())  # noqa: B023 (used at once)

            run_document(model, ids, sink, chunk_tokens=args.eval_len, start=start)
            for layer, (q, k, v) in sorted(captured.items()):
                evaluate_layer(totals, tag, layer, q, qidx + start, k, v, start, scorer)
            print(f"[fidelity] {tag}: text {i + 1}/{len(seqs)} done ({time.time() - started:.0f} s)", file=sys.stderr)
    layers = model.config.num_hidden_layers
    results, per_layer = _summarise(totals, "base", args, layers)
    cal = scorer.books["query_aware"].meta.calibration
    workload = {
        "calibration": {k: cal.get(k) for k in ("data", "text_tokens", "uuid_tokens", "documents", "keys_per_head")},
        "codebook_size": args.codebook_size, "kmeans_max_iters": args.iters, "dtype": args.dtype,
        "evaluation": f"{args.num_seqs} held-out pydoc texts × {args.eval_len} tokens, {len(qidx)} decode queries each over positions {int(qidx[0])}..{int(qidx[-1])}, all {layers} layers",
        "window": args.window, "sinks": args.sinks, "b": args.b, "quest_page": args.quest_page,
        "buckets": buckets.to_dict(), "shift": shift,
        "budget_rule": "K = ceil(budget * length) tokens per (query, kv head) besides sinks and window",
    }
    report = {
        "meta": run_meta(args.device, f"SmolLM2-135M-Instruct ({args.model_path})" if "SmolLM2" in args.model_path else args.model_path, workload),
        "selectors": SELECTORS,
        "results": results,
        "per_layer_recall_at_3pct": per_layer,
        "diagnostics": {
            "score_correlation": {k: round(sum(v) / len(v), 4) for k, v in sorted(totals.diag.items())},
            "note": "score_corr: Pearson correlation over far tokens between approximate logits and exact "
                    "log-probabilities; score_corr_vs_exact_keys: against the same WRoPE mode with unquantized keys "
                    "(the quantizer alone); wrope_attention_recall: share of the far tokens' attention mass under "
                    "that mode's exact-key WRoPE scores that a selection keeps (the quantizer alone, selection-level)",
            "seconds_fit": {k: b.meta.calibration.get("seconds_fit") for k, b in scorer.books.items()},
        },
    }
    if shift:
        report["results_shifted"] = _summarise(totals, "shifted", args, layers)[0]
    return report


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab20").colors  # 11+ selectors: the default cycle repeats after 10
    for i, (name, rows) in enumerate(report["results"].items()):
        x = [100 * float(b) for b in rows]
        style = "--" if name == "oracle" or "exact_keys" in name else ("-." if "bucketed" in name else "-")
        kw = {"color": colors[i % len(colors)], "marker": "osD^v<>ph*X"[i % 11], "markersize": 4, "label": name}
        ax1.plot(x, [r["recall"] for r in rows.values()], style, **kw)
        ax2.plot(x, [r["output_rel_error"] for r in rows.values()], style, **kw)
    ax1.set(xlabel="budget K (% of context)", ylabel="attention-mass recall", title="Recall (higher is better)")
    ax2.set(xlabel="budget K (% of context)", ylabel="‖o − o_dense‖ / ‖o_dense‖", title="Output error (lower is better)", yscale="log")
    ax1.legend(fontsize=7)
    fig.suptitle(f"{report['meta']['model'].split(' (')[0]} on {report['meta']['device']}: {report['meta']['workload']['evaluation']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(results: dict[str, Any]) -> str:
    budgets = list(next(iter(results.values())))
    head = "| selector | " + " | ".join(f"{100 * float(b):g} %" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for name, rows in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['recall']:.3f} / {r['output_rel_error']:.3f}" for r in rows.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)
    print("recall / output error\n" + markdown_table(report["results"]))
    if "results_shifted" in report:
        print(f"texts placed {report['meta']['workload']['shift']} positions later\n" + markdown_table(report["results_shifted"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
