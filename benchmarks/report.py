"""Turn ``benchmarks/results/*.json`` into README tables and PNG plots.

    python -m benchmarks.report            # rewrites the marked blocks of README.md

README holds blocks between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->`` (NAME is
``fidelity``, ``accuracy`` or ``throughput``); each is regenerated from the result files, with
a line naming each file's device, commit and command. Plots go next to the results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results")


def _load(pattern: str, results: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, json.loads(p.read_text())) for p in sorted(results.glob(pattern))]


def _source(path: Path, report: dict[str, Any]) -> str:
    m = report.get("meta", {})
    return f"`{path.name}`: {m.get('device', '?')}, commit {str(m.get('commit', '?'))[:7]}, `{m.get('command', '?')}`"


def _fidelity_table(results: dict[str, Any]) -> str:
    budgets = list(next(iter(results.values())))
    lines = ["| selector | " + " | ".join(f"{100 * float(b):g} %" for b in budgets) + " | tokens kept at 3 % |",
             "|---" * (len(budgets) + 2) + "|"]
    for name, rows in results.items():
        kept = rows.get("0.03", {}).get("selected_fraction")
        cells = " | ".join(f"{v['recall']:.3f} / {v['output_rel_error']:.3f}" for v in rows.values())
        lines.append(f"| `{name}` | {cells} | " + (f"{100 * kept:.1f} % |" if kept is not None else "– |"))
    return "\n".join(lines)


def fidelity_block(results: Path) -> str:
    files = _load("fidelity.json", results)
    if not files:
        return "_no fidelity results yet_"
    path, r = files[0]
    out = "Attention-mass recall / relative output error. " + _source(path, r) + "\n\n" + _fidelity_table(r["results"])
    if "results_shifted" in r:
        shift = r["meta"]["workload"].get("shift")
        out += f"\n\nThe same texts placed {shift:,} positions later:\n\n" + _fidelity_table(r["results_shifted"])
    legend = "\n".join(f"- `{k}`: {v}" for k, v in r.get("selectors", {}).items())
    return out + "\n\n" + legend


def accuracy_block(results: Path) -> str:
    """One table per prompt length, a column per run (runs without that length are left out)."""
    files = _load("accuracy-*.json", results)
    if not files:
        return "_no accuracy results yet_"
    lengths = sorted({int(k) for _, r in files for cells in r["results"].values() for k in cells})
    tasks = list(dict.fromkeys(t for _, r in files for t in r["results"]))
    out = []
    for x in lengths:
        runs = [(p, r) for p, r in files if any(str(x) in c for c in r["results"].values())]
        lines = ["| task | " + " | ".join(r["label"] for _, r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for task in tasks:
            cells = [r["results"].get(task, {}).get(str(x)) for _, r in runs]
            lines.append(f"| {task} | " + " | ".join(f"{c['score']:.2f}" if c else "–" for c in cells) + " |")
        means = []
        for _, r in runs:
            scores = [c[str(x)]["score"] for c in r["results"].values() if str(x) in c]
            means.append(f"**{sum(scores) / len(scores):.2f}**")
        lines.append("| **mean** | " + " | ".join(means) + " |")
        out.append(f"**{x:,} tokens**\n\n" + "\n".join(lines))
    sources = []
    for path, r in files:
        n = sorted({c["n"] for cells in r["results"].values() for c in cells.values()})
        state = "complete" if r.get("complete") else "PARTIAL: " + str(r.get("error"))
        server = f"; server: `{r['meta']['server']}`" if r["meta"].get("server") else ""
        sources.append(f"- **{r['label']}** ({state}; {'/'.join(map(str, n))} samples per cell): " + _source(path, r) + server)
    return "\n\n".join(out) + "\n\n" + "\n".join(sources)


def throughput_block(results: Path) -> str:
    files = _load("throughput-*.json", results)
    if not files:
        return "_no throughput results yet_"
    lines = ["| run | input | concurrency | output tok/s | mean TTFT (s) | mean TPOT (ms) | KV capacity (tokens) | peak GPU (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    sources = []
    for path, r in files:
        sources.append("- " + _source(path, r) + f"; server: `{r.get('server_command', '?')}`")
        for run in r["runs"]:
            if "error" in run:
                lines.append(f"| {r['label']} | {run['input_len']:,} | – | {run['error']} | | | | |")
                continue
            kv, gpu = r.get("kv_capacity_tokens"), r.get("peak_gpu_memory_mib")  # absent: an external server's run
            lines.append(
                f"| {r['label']} | {run['input_len']:,} | {run['concurrency']} | {run['output_throughput']:.1f} | "
                f"{run['mean_ttft_ms'] / 1000:.1f} | {run['mean_tpot_ms']:.1f} | {'–' if kv is None else f'{kv:,}'} | "
                f"{'–' if gpu is None else f'{gpu / 1024:.1f}'} |"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(sources)


def plots(results: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    acc = _load("accuracy-*.json", results)
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
    thr = _load("throughput-*.json", results)
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
    return made


BLOCKS = {"fidelity": fidelity_block, "accuracy": accuracy_block, "throughput": throughput_block}


def update_readme(readme: Path, results: Path) -> list[str]:
    text = readme.read_text()
    changed = []
    for name, block in BLOCKS.items():
        start, end = f"<!-- report:{name} -->", f"<!-- /report:{name} -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if pattern.search(text):
            content = block(results)
            text = pattern.sub(lambda m: f"{start}\n{content}\n{end}", text)
            changed.append(name)
    readme.write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--readme", default="README.md")
    args = p.parse_args(argv)
    results = Path(args.results)
    changed = update_readme(Path(args.readme), results)
    made = plots(results)
    print(f"[report] README blocks: {', '.join(changed) or 'none'}; plots: {', '.join(map(str, made)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
