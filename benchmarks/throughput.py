"""Serving throughput of stock SGLang or a2ats, measured with SGLang's own ``bench_serving``.

    python -m benchmarks.throughput --server stock --label stock-llama8b \\
        --model-path /tmp/models/llama-3.1-8b-shape --input-lens 32768 65536 --output-len 256 \\
        --server-args "--load-format dummy --cuda-graph-backend-prefill disabled"

Starts the server (``python -m sglang.launch_server`` or ``python -m a2ats_sglang.launch_server``
with the same flags otherwise), waits until it is healthy, reads its KV capacity from
``/server_info``, and for each input length runs ``sglang.bench_serving`` on random token ids
at the given concurrency — by default the largest the KV pool holds
(``⌊capacity / (input + output)⌋``, capped by the server's running-request limit). It records
output tokens/s, TTFT, TPOT and ITL, the KV capacity, and peak GPU and host memory, then stops
the server. Stock and a2ats ratios must come from runs on the same GPU, in the same session.

``--shared-prefix Q`` measures prefix reuse instead: each input length is one document that Q
questions (``--question-len`` tokens each) share, sent at once (bench_serving's
generated-shared-prefix dataset, one group; its warm-up request goes first, so a radix cache
holds the document before the timed requests). The server log says how many prompt tokens were
computed and how many read from the cache.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import server as servers
from benchmarks.client import Endpoint, EndpointError
from benchmarks.meta import run_meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--server", choices=list(servers.SERVERS), required=True)
    p.add_argument("--label", required=True, help="names the result file throughput-<label>.json")
    p.add_argument("--model-path", required=True)
    p.add_argument("--input-lens", type=int, nargs="+", default=[32768, 65536])
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: the most the KV pool holds)")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per length (default: WAVES × concurrency)")
    p.add_argument("--waves", type=int, default=2, help="requests per length in multiples of the concurrency")
    p.add_argument("--shared-prefix", type=int, default=None, metavar="Q",
                   help="Q questions over one document of each input length (prefix reuse)")
    p.add_argument("--question-len", type=int, default=128, help="tokens per question with --shared-prefix")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--server-args", default="", help="extra server flags, one string")
    p.add_argument("--startup-timeout", type=float, default=1200.0)
    p.add_argument("--bench-timeout", type=float, default=1800.0, help="seconds allowed for one bench_serving run")
    p.add_argument("--log-dir", default=None, help="server and bench logs (default: next to --out)")
    p.add_argument("--out", default=None, help="result file (default: benchmarks/results/throughput-<label>.json)")
    return p


OFFLOAD_COUNTERS = ("a2ats:hot_hits_total", "a2ats:hot_misses_total", "a2ats:fetched_bytes_total",
                    "a2ats:decode_steps_total")


def offload_counters(url: str) -> dict[str, float]:
    """a2ats offload counters from ``/metrics`` (empty unless the server runs with
    ``--a2ats-offload --enable-metrics``)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
            text = r.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in OFFLOAD_COUNTERS:
            found[name] = found.get(name, 0.0) + float(value)
    return found


def offload_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Hit rate and host→GPU bytes per decode step over one benchmark run."""
    if not after:
        return {}
    d = {k.removeprefix("a2ats:").removesuffix("_total"): after.get(k, 0.0) - before.get(k, 0.0) for k in OFFLOAD_COUNTERS}
    picks = d["hot_hits"] + d["hot_misses"]
    return {"hot_hit_rate": round(d["hot_hits"] / picks, 4) if picks else None,
            "fetched_mib_per_decode_step": round(d["fetched_bytes"] / d["decode_steps"] / 2**20, 3) if d["decode_steps"] else None,
            "decode_steps": int(d["decode_steps"]), "fetched_gib": round(d["fetched_bytes"] / 2**30, 2)}


PREFILL_LINE = re.compile(r"Prefill batch, .*#new-token: (\d+), #cached-token: (\d+)")
DECODE_LINE = re.compile(r"Decode batch, #running-req: (\d+),.*gen throughput \(token/s\): ([\d.]+)")


def steady_decode_rate(server_log: str, running: int) -> float | None:
    """SGLang's own decode throughput with ``running`` requests in the batch: the median over its
    "Decode batch" log lines (one per 40 steps) at that batch size. This is decoding alone with
    every slot busy, what the paper's throughput measures (decode steps of a full batch); the
    first line after a prefill, which includes it, falls out of the median."""
    rates = [float(m[2]) for m in DECODE_LINE.finditer(server_log) if int(m[1]) == running]
    return round(statistics.median(rates), 1) if rates else None


def prefill_tokens(server_log: str) -> dict[str, int]:
    """Prompt tokens SGLang computed and read from its prefix cache, from its "Prefill batch" lines."""
    pairs = [(int(m[1]), int(m[2])) for m in PREFILL_LINE.finditer(server_log)]
    return {"prefill_computed_tokens": sum(p[0] for p in pairs), "prefill_cached_tokens": sum(p[1] for p in pairs)}


def dataset_args(args: argparse.Namespace, input_len: int, prompts: int) -> list[str]:
    if args.shared_prefix:
        return ["--dataset-name", "generated-shared-prefix", "--gsp-num-groups", "1",
                "--gsp-prompts-per-group", str(prompts), "--gsp-system-prompt-len", str(input_len),
                "--gsp-question-len", str(args.question_len), "--gsp-output-len", str(args.output_len)]
    return ["--dataset-name", "random-ids", "--tokenize-prompt", "--random-input-len", str(input_len),
            "--random-output-len", str(args.output_len), "--random-range-ratio", "1.0"]


def bench(server: servers.Server, args: argparse.Namespace, input_len: int, concurrency: int, log: Path) -> dict[str, Any]:
    result_file = log.with_suffix(".jsonl")
    result_file.unlink(missing_ok=True)
    prompts = args.shared_prefix or args.num_prompts or args.waves * concurrency
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--base-url", server.url,
           "--model", args.model_path, *dataset_args(args, input_len, prompts),
           "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
           "--output-file", str(result_file), "--disable-tqdm"]
    counters = offload_counters(server.url)
    log_start = server.log.stat().st_size if server.log.exists() else 0
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=args.bench_timeout)
    offload = offload_summary(counters, offload_counters(server.url))
    with open(server.log, errors="replace") as f:
        f.seek(log_start)
        run_log = f.read()
    steady = steady_decode_rate(run_log, concurrency)
    if done.returncode != 0 or not result_file.exists():
        raise RuntimeError(f"bench_serving failed (exit {done.returncode}); see {log}")
    row = json.loads(result_file.read_text().strip().splitlines()[-1])
    keep = ("completed", "duration", "output_throughput", "input_throughput", "request_throughput",
            "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
            "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms", "max_concurrent_requests")
    tpot = row.get("mean_tpot_ms")
    # what decoding alone sustains with every slot busy (prefill of 32K-64K prompts dominates
    # the end-to-end output rate at 256 output tokens)
    decode_rate = round(concurrency * 1000.0 / tpot, 1) if tpot else None
    return {"input_len": input_len, "output_len": args.output_len, "concurrency": concurrency, "num_prompts": prompts,
            **{k: row.get(k) for k in keep}, "decode_tokens_per_s_at_concurrency": decode_rate,
            "steady_decode_tokens_per_s": steady, **prefill_tokens(run_log), **offload,
            "command": shlex.join(cmd[1:])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out or f"benchmarks/results/throughput-{args.label}.json")
    logs = Path(args.log_dir or out.parent)
    server = servers.Server(args.server, args.model_path, args.port, shlex.split(args.server_args), logs / f"server-{args.label}.log")
    watch = servers.MemoryWatch(server.proc.pid)
    report: dict[str, Any] = {"label": args.label, "server": args.server, "server_command": shlex.join(server.cmd[1:]), "runs": []}
    try:
        report["startup_seconds"] = round(server.wait_healthy(args.startup_timeout), 1)
        info = Endpoint(server.url).check()
        capacity, max_running = int(info["max_total_num_tokens"]), int(info.get("max_running_requests") or 1 << 30)
        report["kv_capacity_tokens"] = capacity
        report["max_running_requests"] = max_running
        for input_len in args.input_lens:
            per_request = input_len + args.output_len
            concurrency = args.concurrency or args.shared_prefix or min(max_running, capacity // per_request)
            if concurrency < 1:
                report["runs"].append({"input_len": input_len, "error": f"one request needs {per_request} tokens; KV capacity is {capacity}"})
                continue
            try:
                row = bench(server, args, input_len, concurrency, logs / f"bench-{args.label}-{input_len}.log")
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                row = {"input_len": input_len, "concurrency": concurrency, "error": str(e)}
            report["runs"].append(row)
            print(f"[throughput] {args.label} input {input_len}: {row.get('output_throughput')} output tok/s "
                  f"at concurrency {concurrency} {row.get('error', '')}", file=sys.stderr)
    finally:
        server.stop()
        watch.stop()
    # the a2ats server's own account of its memory (codes, staging, hot buffers, host pool)
    report["server_notes"] = [line.split("] ", 1)[-1] for line in server.tail(100000).splitlines() if "A²ATS" in line][:12]
    report["peak_gpu_memory_mib"] = watch.gpu_mib
    report["peak_host_rss_gib"] = round(watch.host_gib, 1)
    report["meta"] = run_meta("cuda", args.model_path, {
        "server": args.server, "server_args": args.server_args, "input_lens": args.input_lens,
        "output_len": args.output_len,
        "dataset": (f"one shared document of each input length, {args.shared_prefix} questions of {args.question_len} "
                    "tokens (sglang.bench_serving generated-shared-prefix)") if args.shared_prefix
        else "random token ids (sglang.bench_serving random-ids)",
        "concurrency": args.concurrency or "largest the KV pool holds",
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (RuntimeError, EndpointError, subprocess.TimeoutExpired, OSError) as e:
        print(f"benchmarks.throughput: error: {e}", file=sys.stderr)
        return 1
    for r in report["runs"]:
        print(json.dumps({k: r.get(k) for k in ("input_len", "concurrency", "output_throughput", "mean_ttft_ms", "mean_tpot_ms", "error")}))
    return 1 if any("error" in r for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
