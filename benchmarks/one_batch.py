"""The whole model's decode step, stock SGLang against a2ats: SGLang's one-batch benchmark.

    python -m benchmarks.one_batch --model-path /tmp/models/llama-3.1-8b-shape --batch-size 16 --input-len 32768

Runs SGLang's one-batch benchmark on stock FlashInfer (``python -m benchmarks.one_batch_stock``)
and ``python -m a2ats_sglang.bench_one_batch`` with the same flags, one after the other on the
same GPU, both prefilling the batch in groups of ``--prefill-tokens``, and writes their prefill and median
decode latencies with the ratio to ``benchmarks/results/one-batch-<gpu>.json``. Unlike
``benchmarks.decode_step`` this times everything a decode step runs (weights, MLP, sampling),
under SGLang's own decode CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from a2ats_sglang.patches import one_batch_prefill
from benchmarks.meta import device_name, gpu_short_name, write_results

ROOT = Path(__file__).resolve().parent.parent
# both prefill the batch in groups (patches/one_batch_prefill.py): SGLang's own runs it in one forward
SIDES = {"stock": "benchmarks.one_batch_stock", "a2ats": "a2ats_sglang.bench_one_batch"}
KEPT = ("batch_size", "input_len", "output_len", "prefill_latency", "prefill_throughput", "median_decode_latency",
        "median_decode_throughput", "total_latency")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.one_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True, help="model directory (dummy weights are loaded)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--input-len", type=int, default=32768)
    p.add_argument("--output-len", type=int, default=64, help="decode steps timed (the median is reported)")
    p.add_argument("--sides", nargs="+", choices=list(SIDES), default=list(SIDES))
    p.add_argument("--prefill-tokens", type=int, default=one_batch_prefill.DEFAULT_TOKENS,
                   help="prompt tokens prefilled per forward, whole requests (SGLang's benchmark prefills the batch at "
                        "once: batch 16 at 32K runs out of memory on an H200)")
    p.add_argument("--out", default=None, help="result file (default: benchmarks/results/one-batch-<gpu>.json)")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)  # the tests' fake benchmark
    return p


def side_argv(args: argparse.Namespace, side: str, result_file: Path) -> list[str]:
    """The same flags on both sides; stock names its backend, a2ats is its own."""
    argv = [args.python, "-m", SIDES[side], "--model-path", args.model_path, "--load-format", "dummy",
            "--batch-size", str(args.batch_size), "--input-len", str(args.input_len),
            "--output-len", str(args.output_len), "--context-length", str(args.input_len + args.output_len + 64),
            "--cuda-graph-max-bs", str(args.batch_size), "--run-name", side, "--result-filename", str(result_file)]
    return argv + (["--attention-backend", "flashinfer"] if side == "stock" else [])


def run_side(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """One benchmark process: its last result line, or the error it ended with."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.jsonl"
        argv = side_argv(args, side, result_file)
        print(f"[one_batch] {side}: {' '.join(argv[1:])}", flush=True)
        env = {**os.environ, one_batch_prefill.ENV: str(args.prefill_tokens)}  # both sides' processes read it
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        lines = result_file.read_text().splitlines() if result_file.exists() else []
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "command": " ".join(argv[1:])}
        row = json.loads(lines[-1])
        return {**{k: row[k] for k in KEPT if k in row}, "command": " ".join(argv[1:])}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prefill_tokens <= 0:
        raise SystemExit(f"--prefill-tokens {args.prefill_tokens}: expected a positive number of tokens")
    results = {side: run_side(args, side) for side in args.sides}
    stock, a2ats = results.get("stock", {}), results.get("a2ats", {})
    if "median_decode_latency" in stock and "median_decode_latency" in a2ats:
        results["decode_speedup"] = round(stock["median_decode_latency"] / a2ats["median_decode_latency"], 3)
    for side, r in results.items():
        print(f"[one_batch] {side}: {r}", flush=True)
    out = args.out or str(ROOT / f"benchmarks/results/one-batch-{gpu_short_name(device_name('cuda'))}.json")
    workload = {k: getattr(args, k) for k in ("batch_size", "input_len", "output_len", "prefill_tokens")}
    write_results(out, "cuda", Path(args.model_path).name + " (dummy weights)", workload, results)
    return 0 if all("error" not in r for r in results.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
