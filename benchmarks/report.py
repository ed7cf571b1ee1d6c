"""Turn ``benchmarks/results/*.json`` into the measurement documents and PNG plots.

    python -m benchmarks.report            # writes docs/results.md and docs/fidelity.md

Each document is generated whole from its template, ``docs/NAME.in.md`` → ``docs/NAME.md``:
hand-written prose with marker lines ``<!-- report:BLOCK -->``, each replaced by the block of
that name (:data:`BLOCKS`) built from the result files. Every table is followed by its sources
(result file, GPU, commit and command, from the file's ``meta``), and ``<!-- report:devices -->``
says which GPUs the document's tables were measured on. Result files that no document reads are
listed on stdout. Plots go next to the results.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.compare import differences
from benchmarks.tasks import SHARED_DOCUMENT

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!-- report:([a-z0-9_]+) -->$", re.M)
DEVICES = "devices"  # the marker filled last, from the sources of every other block

Result = tuple[Path, dict[str, Any]]


class Block(NamedTuple):
    text: str
    sources: tuple[Path, ...]  # the result files the text was built from


# ---------------------------------------------------------------------------------------------
# reading result files


def _load(results: Path, *patterns: str) -> list[Result]:
    paths = sorted({p for pattern in patterns for p in results.glob(pattern)})
    return [(p, json.loads(p.read_text(encoding="utf-8"))) for p in paths]


def _one(results: Path, name: str) -> Result | None:
    path = results / name
    return (path, json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def _source(path: Path, report: dict[str, Any]) -> str:
    m = report.get("meta", {})
    return f"`{path.name}`: {m.get('device', '?')}, commit {str(m.get('commit', '?'))[:7]}, `{m.get('command', '?')}`"


def _sources(files: Iterable[Result]) -> str:
    return "\n".join("- " + _source(p, r) for p, r in files)


def _none(what: str) -> Block:
    return Block(f"_no {what} results yet_", ())


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    return "\n".join([_row(header), "|---" * len(header) + "|", *(_row(r) for r in rows)])


def _ratio(x: float | None, base: float | None) -> str:
    return f" ({x / base:.2f}×)" if x is not None and base else ""


# ---------------------------------------------------------------------------------------------
# fidelity (benchmarks.fidelity)


def _fidelity_table(results: dict[str, Any]) -> str:
    budgets = list(next(iter(results.values())))
    rows = []
    for name, cells in results.items():
        kept = cells.get("0.03", {}).get("selected_fraction")
        rows.append([f"`{name}`", *(f"{v['recall']:.3f} / {v['output_rel_error']:.3f}" for v in cells.values()),
                     "–" if kept is None else f"{100 * kept:.1f} %"])
    return _table(["selector", *(f"{100 * float(b):g} %" for b in budgets), "tokens kept at 3 %"], rows)


def fidelity_block(results: Path) -> Block:
    """Recall / output error of every selector at every budget, and at the shifted positions."""
    found = _one(results, "fidelity.json")
    if found is None:
        return _none("fidelity")
    path, r = found
    out = "Attention-mass recall / relative output error.\n\n" + _fidelity_table(r["results"])
    if "results_shifted" in r:
        shift = r["meta"]["workload"].get("shift")
        out += f"\n\nThe same texts placed {shift:,} positions later:\n\n" + _fidelity_table(r["results_shifted"])
    legend = "\n".join(f"- `{k}`: {v}" for k, v in r.get("selectors", {}).items())
    return Block(out + "\n\n" + legend + "\n\nSource:\n\n" + _sources([found]), (path,))


# (selector, what it is) rows of the 3 % summary
FIDELITY_SUMMARY = (
    ("oracle", ""),
    ("a2ats", "single b = 2,048"),
    ("a2ats_bucketed", "H at b"),
    ("a2ats_bucketed_hb", "H over buckets"),
    ("kmeans_bucketed", ""),
    ("wrope_bucketed_exact_keys", "ceiling"),
    ("quest", ""),
)


def fidelity_summary_block(results: Path) -> Block:
    """At 3 %: recall, output error and gap to the oracle; then the gap at every budget."""
    found = _one(results, "fidelity.json")
    if found is None:
        return _none("fidelity")
    path, r = found
    res = r["results"]
    oracle = res["oracle"]
    rows = []
    for name, note in FIDELITY_SUMMARY:
        if name not in res:
            continue
        cell = res[name]["0.03"]
        gap = "—" if name == "oracle" else f"{oracle['0.03']['recall'] - cell['recall']:.3f}"
        rows.append([f"`{name}`" + (f" ({note})" if note else ""), f"{cell['recall']:.3f}", f"{cell['output_rel_error']:.3f}", gap])
    at3 = _table(["3 % budget", "recall", "output error", "gap to oracle recall"], rows)
    budgets = list(oracle)
    gaps = [[f"`{name}`", *(f"{oracle[b]['recall'] - res[name][b]['recall']:.3f}" for b in budgets)]
            for name, _ in FIDELITY_SUMMARY if name in res and name != "oracle"]
    by_budget = _table(["gap to oracle recall", *(f"{100 * float(b):g} %" for b in budgets)], gaps)
    return Block(at3 + "\n\n" + by_budget + "\n\nSource:\n\n" + _sources([found]), (path,))


def fidelity_diagnostics_block(results: Path) -> Block:
    """Where a selector's error comes from: its scores against the truth and against exact keys."""
    found = _one(results, "fidelity.json")
    if found is None:
        return _none("fidelity")
    path, r = found
    diag = r.get("diagnostics", {}).get("score_correlation", {})
    names = list(dict.fromkeys(k.split("/", 1)[1].split("@")[0] for k in diag if "/" in k))
    rows = []
    for name in names:
        cells = [diag.get(f"score_corr/{name}"), diag.get(f"score_corr_vs_exact_keys/{name}"),
                 diag.get(f"wrope_attention_recall/{name}@0.03")]
        rows.append([f"`{name}`", *("–" if c is None else f"{c:.3f}" for c in cells)])
    table = _table(["selector", "far-token logits vs exact log-probabilities", "vs the same WRoPE with exact keys",
                    "WRoPE attention mass kept at 3 %"], rows)
    note = diag.get("note")
    return Block(table + (f"\n\n_{note}_" if note else "") + "\n\nSource:\n\n" + _sources([found]), (path,))


def fidelity_runs_block(results: Path) -> Block:
    """Every fidelity run side by side: its codebook and H, and the single-b selectors at 3 %."""
    files = _load(results, "fidelity*.json")
    if not files:
        return _none("fidelity")
    files.sort(key=lambda f: (f[0].name != "fidelity.json", f[0].name))  # the main run first
    rows = []
    for path, r in files:
        w, res = r["meta"]["workload"], r["results"]
        diag = r.get("diagnostics", {}).get("score_correlation", {})
        corr = diag.get("score_corr_vs_exact_keys/a2ats", diag.get("score_corr_vs_wrope_exact/a2ats"))
        distances = [d for d in w.get("h_distances", [w.get("b")]) if d is not None]
        size = w.get("codebook_size")
        rows.append([f"`{path.name}`", r["meta"].get("device", "?"), "–" if size is None else f"{size:,}",
                     ", ".join(f"{d:,}" for d in distances) or "–",
                     *(f"{res[s]['0.03']['recall']:.3f}" if s in res else "–" for s in ("a2ats", "kmeans", "wrope_exact_keys")),
                     "–" if corr is None else f"{corr:.3f}"])
    table = _table(["run", "GPU", "codewords", "H from WRoPE distances", "`a2ats` recall at 3 %", "`kmeans`",
                    "`wrope_exact_keys`", "`a2ats` logits vs exact-key WRoPE (correlation)"], rows)
    return Block(table + "\n\nSources:\n\n" + _sources(files), tuple(p for p, _ in files))


# ---------------------------------------------------------------------------------------------
# accuracy (benchmarks.accuracy, benchmarks.compare)


def accuracy_block(results: Path, patterns: tuple[str, ...]) -> Block:
    """One table per prompt length, a column per run (runs without that length are left out)."""
    files = _load(results, *patterns)
    if not files:
        return _none("accuracy")
    lengths = sorted({int(k) for _, r in files for cells in r["results"].values() for k in cells})
    tasks = list(dict.fromkeys(t for _, r in files for t in r["results"]))
    out = []
    for x in lengths:
        runs = [r for _, r in files if any(str(x) in c for c in r["results"].values())]
        rows = []
        for task in tasks:
            cells = [r["results"].get(task, {}).get(str(x)) for r in runs]
            rows.append([task, *(f"{c['score']:.2f}" if c else "–" for c in cells)])
        means = []
        for r in runs:
            scores = [c[str(x)]["score"] for c in r["results"].values() if str(x) in c]
            means.append(f"**{sum(scores) / len(scores):.2f}**")
        rows.append(["**mean**", *means])
        out.append(f"**{x:,} tokens**\n\n" + _table(["task", *(r["label"] for r in runs)], rows))
    sources = []
    for path, r in files:
        n = sorted({c["n"] for cells in r["results"].values() for c in cells.values()})
        state = "complete" if r.get("complete") else "PARTIAL: " + str(r.get("error"))
        server = f"; server: `{r['meta']['server']}`" if r["meta"].get("server") else ""
        sources.append(f"- **{r['label']}** ({state}; {'/'.join(map(str, n))} samples per cell): " + _source(path, r) + server)
    return Block("\n\n".join(out) + "\n\nSources:\n\n" + "\n".join(sources), tuple(p for p, _ in files))


class Pair(NamedTuple):
    what: str
    reference: str  # result file names
    candidate: str


EQUALITY = (
    Pair("full budget vs stock FlashInfer, deterministic", "accuracy-det-stock-smollm2.json", "accuracy-det-a2ats-full-smollm2.json"),
    Pair("full budget vs stock Triton, deterministic", "accuracy-det-stock-triton-smollm2.json", "accuracy-det-a2ats-full-smollm2.json"),
    Pair("full budget vs stock FlashInfer, not deterministic", "accuracy-stock-same-run-smollm2.json", "accuracy-a2ats-full-smollm2.json"),
    Pair("two stock FlashInfer runs, different batching", "accuracy-stock-smollm2.json", "accuracy-stock-same-run-smollm2.json"),
    Pair("offload vs GPU-resident, same budget, deterministic", "accuracy-offload-eq-resident-smollm2.json", "accuracy-offload-eq-offload-smollm2.json"),
    Pair("offload: radix cache vs none, deterministic", "accuracy-prefix-noradix-smollm2.json", "accuracy-prefix-reuse-smollm2.json"),
    Pair("offload: radix cache vs none, not deterministic", "accuracy-prefix-noradix-nodet-smollm2.json", "accuracy-prefix-reuse-nodet-smollm2.json"),
)


def equality_block(results: Path) -> Block:
    """How many greedy outputs two runs share token for token (same seeded prompts)."""
    rows, used = [], {}
    for pair in EQUALITY:
        a, b = _one(results, pair.reference), _one(results, pair.candidate)
        if a is None or b is None:
            continue
        cells, _ = differences(a[1], b[1])
        same, total = sum(s for s, _ in cells.values()), sum(n for _, n in cells.values())
        rows.append([pair.what, f"`{a[0].name}`", f"`{b[0].name}`", f"**{same} / {total}**"])
        used.update({a[0]: a, b[0]: b})
    if not rows:
        return _none("equality")
    table = _table(["comparison", "reference", "candidate", "identical outputs"], rows)
    return Block(table + "\n\nSources:\n\n" + _sources(used.values()), tuple(used))


# ---------------------------------------------------------------------------------------------
# decode step (benchmarks.decode_step)


def _step_ms(row: dict[str, Any]) -> dict[str, float]:
    """Mean, idle and due ms of the serving path (files that timed two variants name it)."""
    by_variant = row.get("a2ats_step_ms_by_variant", {})
    if row.get("serving_variant") in by_variant:
        return by_variant[row["serving_variant"]]
    if "separate_first_pass" in by_variant:  # files of 2026-11 timed two variants and served this one
        return by_variant["separate_first_pass"]
    return {**row["a2ats_step_ms"], "mean": row["a2ats_ms"]}


def decode_step_block(results: Path) -> Block:
    """Attention ms of one decode step (every layer), stock vs A²ATS with its split, per file."""
    files = _load(results, "decode-step*.json")
    if not files:
        return _none("decode-step")
    files.sort(key=lambda f: (f[1]["meta"]["workload"].get("graph_context") or 0, f[0].name))  # default sizing first
    out = []
    for path, r in files:
        w = r["meta"]["workload"]
        first = r["results"][0]
        sized = f", CUDA graphs sized for {w['graph_context']:,} tokens" if w.get("graph_context") else ""
        rows = []
        for row in r["results"]:
            s, step = row["a2ats_stages_ms"], _step_ms(row)
            rows.append([row["batch"], f"{row['stock_ms']:.2f} ms",
                         f"{step['mean']:.2f} ms ({step['idle']:.2f} / {step['due']:.2f})",
                         f"{row['stock_ms'] / step['mean']:.2f}×", f"{s['encode_idle']:.2f} / {s['encode_due']:.2f}",
                         f"{s['lookup_table']:.2f}", f"{s['score']:.2f}", f"{s['topk']:.2f}", f"{s['attention']:.2f}"])
        gpu, commit = r["meta"].get("device", "GPU unknown"), str(r["meta"].get("commit", "?"))[:7]
        caption = (f"**`{path.name}`** ({gpu}, commit {commit}): {w['context']:,}-token contexts{sized}, "
                   f"KV slots {w.get('slots', 'random')}; {first['layers']} layers, "
                   f"{first['kept_tokens_per_kv_head']:,} tokens kept per kv head, keys encoded in groups of "
                   f"{first['encode_group']}")
        onchip = [row for row in r["results"] if row.get("onchip")]
        if onchip:  # an experiment that lost (docs/decode-kernels.md); its code is in the file's commit
            batches = ", ".join(str(row["batch"]) for row in onchip)
            pair = ", ".join(f"{row['a2ats_stages_ms']['score_topk']:.2f}" for row in onchip)
            caption += (f"; the step picks on chip (`kernels/onchip.py` at {commit}, removed since) at batch {batches}: "
                        f"the score and top-K columns time the split kernels alone, the on-chip pair takes {pair} ms")
        table = _table(["batch", "stock FlashInfer", "A²ATS (idle / due)", "stock / A²ATS", "encode idle / due",
                        "lookup table", "score", "top-K", "attention"], rows)
        out.append(caption + "\n\n" + table + _roofline_table(r["results"]))
    return Block("\n\n".join(out) + "\n\nSources:\n\n" + _sources(files), tuple(p for p, _ in files))


def _roofline_table(results: list[dict[str, Any]]) -> str:
    """Bytes moved and bandwidth reached, where the file has them (``benchmarks.step_bytes``)."""
    rows = []
    for row in results:
        if "a2ats_stages_gbps" not in row:
            continue
        g = row["a2ats_stages_gbps"]
        roof = f"{row['a2ats_roofline_ms']:.2f} ms ({row['a2ats_vs_roofline']:.1f}× it)" if row.get("a2ats_roofline_ms") else "—"
        apart = row.get("a2ats_step_ms_by_variant", {}).get("separate_first_pass", {}).get("mean")
        rows.append([row["batch"], f"{row['a2ats_step_bytes'] / 1e9:.2f} / {row['stock_bytes'] / 1e9:.1f}",
                     f"{row['a2ats_step_gbps']:,.0f} / {row['stock_gbps']:,.0f}", roof,
                     "—" if apart is None else f"{apart:.2f} ms",
                     *(f"{g[k]:,.0f}" if g.get(k) else "—"
                       for k in ("encode_due", "lookup_table", "score", "topk", "score_topk", "attention"))])
    if not rows:
        return ""
    return ("\n\nBytes per step (all layers), the bandwidth each time reaches (GB/s), and the step with the "
            "top-K's first pass in its own launch:\n\n") + _table(
        ["batch", "GB, A²ATS / stock", "GB/s, A²ATS / stock", "A²ATS roofline", "A²ATS, first pass apart",
         "encode due", "lookup table", "score", "top-K", "score + top-K, counted in score", "attention"], rows)


def kernel_tuning_block(results: Path) -> Block:
    """Each knob's sweep (``benchmarks.kernel_tuning``): ms of its stage per value, per batch."""
    files = _load(results, "kernel-tuning*.json")
    if not files:
        return _none("kernel-tuning")
    out = []
    for path, r in files:
        rows = []
        for row in r["results"]:
            for knob, sweep in row.items():
                if not isinstance(sweep, dict):
                    continue
                timed = {v: ms for v, ms in sweep["ms"].items() if not isinstance(ms, str)}
                best = min(timed, key=timed.get, default=None)
                cells = ", ".join(f"{v}: {ms}" if isinstance(ms, str) else f"**{v}: {ms:.3f}**" if v == best
                                  else f"{v}: {ms:.3f}" for v, ms in sweep["ms"].items())
                rows.append([row["batch"], f"`{knob}`", sweep["stage"], sweep["default"], cells])
        w = r["meta"]["workload"]
        out.append(f"**`{path.name}`** ({r['meta'].get('device', '?')}, commit {str(r['meta'].get('commit', '?'))[:7]}): "
                   f"{w['context']:,}-token contexts, ms a step (all layers) of the stage each knob feeds, the fastest in bold\n\n"
                   + _table(["batch", "knob", "stage", "default then", "ms by value"], rows))
    return Block("\n\n".join(out) + "\n\nSources:\n\n" + _sources(files), tuple(p for p, _ in files))


def score_probe_block(results: Path) -> Block:
    """The score kernel alone (``benchmarks.score_probe``): ms a step by slot and code layout at
    the default grid, and the fastest variant of each slot layout."""
    files = _load(results, "score-probe*.json")
    if not files:
        return _none("score-probe")
    out = []
    for path, r in files:
        rows = []
        for batch in r["results"]:
            timed = [v for v in batch["variants"] if "ms" in v]
            default = {(v["slots"], v["codes"]): v["ms"] for v in timed if v["run_target"] == 32 and v["warps"] == 4}
            for slots in dict.fromkeys(v["slots"] for v in timed):
                best = min((v for v in timed if v["slots"] == slots), key=lambda v: v["ms"])
                rows.append([batch["batch"], slots, *(f"{default[(slots, c)]:.2f}" if (slots, c) in default else "—"
                                                     for c in ("token", "head")),
                             f"{best['ms']:.2f} ({best['codes']} codes, run target {best['run_target']}, "
                             f"{best['warps']} warps)"])
        m = r["meta"]
        out.append(f"**`{path.name}`** ({m.get('device', '?')}, commit {str(m.get('commit', '?'))[:7]}): "
                   f"{m['workload']['context']:,}-token contexts, ms a step (all layers, each its own codes) at run "
                   "target 32 and 4 warps\n\n"
                   + _table(["batch", "KV slots", "codes [slots, Hkv]", "codes [Hkv, slots]", "fastest, these slots"], rows))
    return Block("\n\n".join(out) + "\n\nSources:\n\n" + _sources(files), tuple(p for p, _ in files))


# ---------------------------------------------------------------------------------------------
# serving throughput (benchmarks.throughput)


def throughput_block(results: Path) -> Block:
    """Every throughput run: bench_serving's numbers, KV capacity and peak GPU memory."""
    files = _load(results, "throughput-*.json")
    if not files:
        return _none("throughput")
    rows, sources = [], []
    for path, r in files:
        sources.append("- " + _source(path, r) + f"; server: `{r.get('server_command', '?')}`")
        commit = str(r.get("meta", {}).get("commit", "?"))[:7]
        for run in r["runs"]:
            if "error" in run:
                rows.append([r["label"], commit, f"{run['input_len']:,}", "–", run["error"], "", "", "", ""])
                continue
            kv, gpu = r.get("kv_capacity_tokens"), r.get("peak_gpu_memory_mib")  # absent: an external server's run
            rows.append([r["label"], commit, f"{run['input_len']:,}", run["concurrency"], f"{run['output_throughput']:.1f}",
                         f"{run['mean_ttft_ms'] / 1000:.1f}", f"{run['mean_tpot_ms']:.1f}",
                         "–" if kv is None else f"{kv:,}", "–" if gpu is None else f"{gpu / 1024:.1f}"])
    table = _table(["run", "commit", "input", "concurrency", "output tok/s", "mean TTFT (s)", "mean TPOT (ms)",
                    "KV capacity (tokens)", "peak GPU (GiB)"], rows)
    return Block(table + "\n\nSources:\n\n" + "\n".join(sources), tuple(p for p, _ in files))


class Side(NamedTuple):
    file: str
    name: str  # the row's server column


# rows of the offload comparison; the first is the baseline of the ratios
OFFLOAD_THROUGHPUT = (
    Side("throughput-stock-offload-llama8b.json", "stock (FlashInfer, KV in HBM)"),
    Side("throughput-a2ats-offload-llama8b.json", "a2ats offload"),
    Side("throughput-a2ats-offload-llama8b-135aadb.json", "a2ats offload"),
)


def offload_throughput_block(results: Path) -> Block:
    """Stock vs offload at each prompt length: end-to-end and steady decode tokens/s, TTFT."""
    sides = [(side, found) for side in OFFLOAD_THROUGHPUT if (found := _one(results, side.file))]
    if not sides:
        return _none("offload throughput")
    base = {run["input_len"]: run for run in sides[0][1][1]["runs"] if "error" not in run}
    lengths = sorted({run["input_len"] for _, (_, r) in sides for run in r["runs"]})
    rows = []
    for x in lengths:
        for i, (side, (_, r)) in enumerate(sides):
            run = next((run for run in r["runs"] if run["input_len"] == x), None)
            if run is None:
                continue
            name = side.name if i == 0 else f"{side.name}, {str(r['meta']['commit'])[:7]}"
            if "error" in run:
                rows.append([f"{x:,}", name, "–", run["error"], "", ""])
                continue
            b = {} if i == 0 else base.get(x, {})
            steady = run.get("steady_decode_tokens_per_s")
            rows.append([f"{x:,}", name, run["concurrency"],
                         f"{run['output_throughput']:.1f}" + _ratio(run["output_throughput"], b.get("output_throughput")),
                         "–" if steady is None else f"{steady:.0f}" + _ratio(steady, b.get("steady_decode_tokens_per_s")),
                         f"{run['mean_ttft_ms'] / 1000:.1f} s"])
    table = _table(["prompt", "server", "concurrency", "output tok/s", "steady decode tok/s", "mean TTFT"], rows)
    return Block(table + "\n\nSources:\n\n" + _sources(found for _, found in sides), tuple(f[0] for _, f in sides))


PREFIX_LLAMA = (
    Side("prefix-stock-llama8b.json", "stock SGLang (FlashInfer, its radix cache, KV in HBM)"),
    Side("prefix-a2ats-llama8b.json", "a2ats offload, radix cache"),
    Side("prefix-a2ats-noradix-llama8b.json", "a2ats offload, `--disable-radix-cache`"),
)


def prefix_llama_block(results: Path) -> Block:
    """One shared document, many questions at once (``benchmarks.throughput --shared-prefix``)."""
    sides = [(side, found) for side in PREFIX_LLAMA if (found := _one(results, side.file))]
    if not sides:
        return _none("prefix reuse")
    rows = []
    for side, (_, r) in sides:
        for run in r["runs"]:
            if "error" in run:
                rows.append([side.name, run["error"], "", "", "", "", ""])
                continue
            computed, cached = run.get("prefill_computed_tokens"), run.get("prefill_cached_tokens")
            tokens = f"{computed:,} / {cached:,}" if computed else "–"  # 0: the server log had no counts
            rows.append([side.name, f"{run['duration']:.1f}", f"{run['mean_ttft_ms'] / 1000:.2f}",
                         f"{run['p99_ttft_ms'] / 1000:.2f}", f"{run['output_throughput']:.1f}",
                         f"{run['mean_tpot_ms']:.1f}", tokens])
    table = _table(["server", "total s", "mean TTFT s", "p99 TTFT s", "output tok/s", "mean TPOT ms",
                    "prefill computed / cached tokens"], rows)
    sources = "\n".join("- " + _source(p, r) + f"; server: `{r.get('server_command', '?')}`" for _, (p, r) in sides)
    return Block(table + "\n\nSources:\n\n" + sources, tuple(f[0] for _, f in sides))


PREFIX_SMOLLM2 = (
    Side("accuracy-prefix-reuse-smollm2.json", "a2ats offload, radix cache, deterministic"),
    Side("accuracy-prefix-noradix-smollm2.json", "a2ats offload, `--disable-radix-cache`, deterministic"),
    Side("accuracy-prefix-stock-smollm2.json", "stock SGLang, its radix cache (FlashInfer)"),
    Side("accuracy-prefix-reuse-nodet-smollm2.json", "a2ats offload, radix cache, not deterministic"),
    Side("accuracy-prefix-noradix-nodet-smollm2.json", "a2ats offload, no radix cache, not deterministic"),
)
PREFIX_TASK = "niah_multiquery"


def prefix_smollm2_block(results: Path) -> Block:
    """The multi-question task one request at a time: the first question of a document is cold,
    the others can hit the cache."""
    sides = [(side, found) for side in PREFIX_SMOLLM2 if (found := _one(results, side.file))]
    if not sides:
        return _none("prefix reuse")
    per_doc = SHARED_DOCUMENT[PREFIX_TASK]
    rows = []
    for side, (_, r) in sides:
        for length, cell in r["results"].get(PREFIX_TASK, {}).items():
            samples = r["samples"][PREFIX_TASK][length]
            ttft = [s["ttft"] for s in samples]
            cold = [s["ttft"] for s in samples if s["index"] % per_doc == 0]
            hit = [s["ttft"] for s in samples if s["index"] % per_doc]
            cached = cell.get("cached_tokens")
            prompt = sum(s["tokens"] for s in samples)
            rows.append([side.name, f"{int(length):,}", len(samples), f"{sum(s['seconds'] for s in samples):.2f}",
                         f"{statistics.mean(ttft):.3f}",
                         f"{statistics.median(ttft):.3f}", f"{statistics.mean(cold):.3f} / {statistics.mean(hit):.3f}",
                         "–" if cached is None else f"{cached:,} of {prompt:,}", f"{cell['score']:.2f}"])
    table = _table(["server", "prompt", "requests", "total s", "mean TTFT s", "median TTFT s",
                    "TTFT s, cold / hit prompts", "cached prompt tokens", "score"], rows)
    sources = "\n".join("- " + _source(p, r) + (f"; server: `{r['meta']['server']}`" if r["meta"].get("server") else "")
                        for _, (p, r) in sides)
    return Block(table + "\n\nSources:\n\n" + sources, tuple(f[0] for _, f in sides))


# ---------------------------------------------------------------------------------------------
# calibration cost (benchmarks.calibration_cost)


def calibration_cost_block(results: Path) -> Block:
    found = _one(results, "calibration_cost.json")
    if found is None:
        return _none("calibration cost")
    path, r = found
    w, s = r["meta"]["workload"], r["seconds"]
    table = _table(
        ["model", "calibration tokens", "codewords × (layer, kv head) pairs", "capture", "k-means", "total",
         "peak GPU", "codebook file"],
        [[r["meta"]["model"], f"{w['calibration_tokens']:,}", f"{w['codebook_size']:,} × {w['pairs']}",
          f"{s['capture']:.0f} s", f"{s['kmeans']:.0f} s", f"**{s['total']:.0f} s**",
          f"{r['peak_gpu_memory_gib']:.1f} GiB", f"{r['codebook_bytes'] / 2**20:.0f} MiB"]],
    )
    return Block(table + "\n\nSource:\n\n" + _sources([found]), (path,))


def one_batch_block(results: Path) -> Block:
    """SGLang's ``bench_one_batch``: the whole model's prefill and decode step, a2ats against stock."""
    files = _load(results, "one-batch*.json")
    if not files:
        return _none("one-batch")
    rows = []
    for path, r in files:
        sides, w = r["results"], r["meta"]["workload"]
        stock, ours = sides["stock"], sides["a2ats"]
        rows.append([path.name, f"{w['batch_size']} × {w['input_len']:,}", w["output_len"],
                     f"{stock['median_decode_latency'] * 1e3:.2f}", f"{ours['median_decode_latency'] * 1e3:.2f}",
                     f"**{stock['median_decode_latency'] / ours['median_decode_latency']:.2f}×**",
                     f"{stock['prefill_latency']:.1f}", f"{ours['prefill_latency']:.1f}"])
    table = _table(["file", "batch × prompt", "outputs", "stock decode step (ms)", "a2ats decode step (ms)",
                    "decode speed-up", "stock prefill (s)", "a2ats prefill (s)"], rows)
    return Block(table + "\n\nSources:\n\n" + _sources(files), tuple(p for p, _ in files))


# ---------------------------------------------------------------------------------------------
# documents


# ---------------------------------------------------------------------------------------------
# the workload suite (benchmarks.suite)

SUITE_SIDES = ("stock", "hicache", "a2ats", "a2ats-offload", "a2ats-shared", "a2ats-tiered")


def _num(x: float | int | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _vs(entry: dict[str, Any], sides: dict[str, Any], key: str, digits: int = 0) -> str:
    """``entry[key]`` with its ratio to stock's and HiCache's (where they ran)."""
    x = entry.get(key)
    ratios = [f"{x / sides[b][key]:.2f}× {b}" for b in ("stock", "hicache")
              if x is not None and sides.get(b, {}).get(key) and b not in (entry.get("_side"),)]
    return _num(x, digits) + (f" ({', '.join(ratios)})" if ratios else "")


def suite_table(report: dict[str, Any]) -> str:
    sides = {name: {**e, "_side": name} for name, e in report["sides"].items()}
    rows = []
    for name in [s for s in SUITE_SIDES if s in sides] + [s for s in sides if s not in SUITE_SIDES]:
        e = sides[name]
        if "error" in e:
            rows.append([f"`{name}`", f"failed: {e['error'][:160]}", "", "", "", "", "", ""])
            continue
        tiers = e.get("kv_capacity_tiers") or {}
        kv = f"{_num(tiers.get('gpu'))} + {_num(tiers.get('host'))}" if tiers.get("host") else _num(e.get("kv_capacity_tokens"))
        hit = f", hit {100 * e['hot_hit_rate']:.1f} %, {e['fetched_mib_per_decode_step']} MiB/step" if e.get("hot_hit_rate") is not None else ""
        rows.append([
            f"`{name}`", _vs(e, sides, "output_tokens_per_s", 1), _vs(e, sides, "steady_decode_tokens_per_s"),
            f"{_num(e.get('ttft_p50_ms'))} / {_num(e.get('ttft_p99_ms'))}",
            f"{_num(e.get('tpot_p50_ms'), 1)} / {_num(e.get('tpot_p99_ms'), 1)}",
            f"{_num(e.get('max_concurrency'))} of {kv}",
            f"{_num(e.get('prompt_tokens_computed'))} / {_num(e.get('prompt_tokens_cached'))}",
            f"{_num(e.get('total_s'), 1)} s, {_num((e.get('peak_gpu_memory_mib') or 0) / 1024, 1)} GiB GPU{hit}",
        ])
    header = ["side", "output tok/s", "steady decode tok/s", "TTFT p50 / p99 ms", "TPOT p50 / p99 ms",
              "most running, of KV tokens (GPU + host)", "prompt tokens computed / cached", "total, peak GPU, a2ats fetch"]
    return _table(header, rows)


def suite_block(results: Path) -> Block:
    files = _load(results, "suite-*.json")
    if not files:
        return _none("suite")
    parts = []
    for path, r in files:
        w = r.get("meta", {}).get("workload", {})
        what = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in w.items() if k != "model")
        commits = sorted({str(e.get("commit", "?"))[:7] for e in r["sides"].values()})
        parts.append(f"**{r['workload']}** ({r.get('meta', {}).get('model', '?')}; {what}; commit {', '.join(commits)})\n\n"
                     + suite_table(r))
    plot = "\n\n![suite](../benchmarks/results/suite.png)" if any("stock" in r["sides"] for _, r in files) else ""
    return Block("\n\n".join(parts) + plot + "\n\nSources:\n\n" + _sources(files), tuple(p for p, _ in files))


BLOCKS: dict[str, Callable[[Path], Block]] = {
    "suite": suite_block,
    "fidelity": fidelity_block,
    "fidelity_summary": fidelity_summary_block,
    "fidelity_diagnostics": fidelity_diagnostics_block,
    "fidelity_runs": fidelity_runs_block,
    "accuracy_budgets": lambda r: accuracy_block(r, ("accuracy-stock-*.json", "accuracy-a2ats-*.json")),
    "accuracy_deterministic": lambda r: accuracy_block(r, ("accuracy-det-*.json", "accuracy-offload-eq-*.json")),
    "equality": equality_block,
    "decode_step": decode_step_block,
    "kernel_tuning": kernel_tuning_block,
    "one_batch": one_batch_block,
    "score_probe": score_probe_block,
    "throughput": throughput_block,
    "offload_throughput": offload_throughput_block,
    "prefix_llama": prefix_llama_block,
    "prefix_smollm2": prefix_smollm2_block,
    "calibration_cost": calibration_cost_block,
}


def devices_line(sources: Iterable[Path], results: Path) -> str:
    """Which GPUs the tables come from, read from each source file's meta."""
    by_device: dict[str, list[str]] = {}
    for path in sorted(set(sources)):
        device = json.loads(path.read_text(encoding="utf-8")).get("meta", {}).get("device", "unrecorded device")
        by_device.setdefault(device, []).append(path.name)
    if not by_device:
        return "_No result files behind this document yet._"
    if len(by_device) == 1:
        (device, names), = by_device.items()
        return f"Every table below was measured on an **{device}** ({len(names)} result files in `{_rel(results)}/`)."
    return "The tables below were measured on these GPUs (result files in `" + _rel(results) + "/`):\n\n" + "\n".join(
        f"- **{device}**: " + ", ".join(f"`{n}`" for n in names) for device, names in sorted(by_device.items()))


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def render(template: str, results: Path, origin: str) -> Block:
    """The document for ``template``: every marker replaced by its block, a generated-file note on top."""
    used: list[Path] = []

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == DEVICES:
            return m.group(0)
        if name not in BLOCKS:
            raise ValueError(f"{origin}: no report block named {name!r} (blocks: {', '.join(BLOCKS)}, {DEVICES})")
        block = BLOCKS[name](results)
        used.extend(block.sources)
        return block.text

    text = MARKER.sub(fill, template)
    text = text.replace(f"<!-- report:{DEVICES} -->", devices_line(used, results))
    note = f"<!-- Generated by `python -m benchmarks.report` from {origin} and the result files: edit those, not this file. -->\n"
    return Block(note + text, tuple(dict.fromkeys(used)))


def write_documents(docs: Path, results: Path) -> tuple[list[Path], set[Path]]:
    """Render every ``docs/*.in.md``; the documents written and the result files they read."""
    written, used = [], set()
    for template in sorted(docs.glob("*.in.md")):
        out = template.with_name(template.name.removesuffix(".in.md") + ".md")
        doc = render(template.read_text(encoding="utf-8"), results, _rel(template))
        out.write_text(doc.text, encoding="utf-8")
        written.append(out)
        used |= set(doc.sources)
    return written, used


def plots(results: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    acc = _load(results, "accuracy-*.json")
    if acc:
        tasks = sorted({t for _, r in acc for t in r["results"]})
        cols = min(4, len(tasks))
        rows = -(-len(tasks) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        for ax, task in zip(axes.flat, tasks):
            for _, r in acc:
                cells = r["results"].get(task, {})
                xs = sorted(int(k) for k in cells)
                ax.plot(xs, [cells[str(x)]["score"] for x in xs], marker="o", label=r["label"])
            ax.set(title=task, ylim=(-0.05, 1.05), xlabel="tokens")
        axes.flat[0].legend(fontsize=7)
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        fig.tight_layout()
        made.append(results / "accuracy.png")
        fig.savefig(made[-1], dpi=110)
    thr = _load(results, "throughput-*.json")
    if thr:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for _, r in thr:
            runs = [x for x in r["runs"] if "error" not in x]
            ax.plot([x["input_len"] for x in runs], [x["output_throughput"] for x in runs], marker="o", label=r["label"])
        ax.set(xlabel="input tokens per request", ylabel="output tokens/s", title="Serving throughput")
        ax.legend(fontsize=8)
        fig.tight_layout()
        made.append(results / "throughput.png")
        fig.savefig(made[-1], dpi=110)
    suite = [(p, r) for p, r in _load(results, "suite-*.json") if "stock" in r["sides"]]
    if suite:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        others = [s for s in SUITE_SIDES if s != "stock" and any(s in r["sides"] for _, r in suite)]  # sides run
        width = 0.8 / len(others)
        for i, side in enumerate(others):
            ratios = []
            for _, r in suite:
                base, e = r["sides"]["stock"].get("output_tokens_per_s"), r["sides"].get(side, {}).get("output_tokens_per_s")
                ratios.append(e / base if e and base else 0.0)
            ax.bar([j + i * width for j in range(len(suite))], ratios, width, label=side)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(suite))], [r["workload"] for _, r in suite], rotation=20, fontsize=7)
        ax.set(ylabel="output tok/s vs stock", title="Workload suite")
        ax.legend(fontsize=7)
        fig.tight_layout()
        made.append(results / "suite.png")
        fig.savefig(made[-1], dpi=110)
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS), help="result files (default: benchmarks/results)")
    p.add_argument("--docs", default=str(DOCS), help="folder of the *.in.md templates and their documents (default: docs)")
    args = p.parse_args(argv)
    results, docs = Path(args.results), Path(args.docs)
    written, used = write_documents(docs, results)
    made = plots(results)
    print(f"[report] documents: {', '.join(map(_rel, written)) or 'none'}; plots: {', '.join(map(_rel, made)) or 'none'}")
    unused = sorted(p.name for p in results.glob("*.json") if p not in used)
    if unused:
        print(f"[report] result files no document reads: {', '.join(unused)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
