"""The yardstick: every workload on every side, on one GPU, resumable.

    python -m benchmarks.suite                       # all workloads, all their sides
    python -m benchmarks.suite --workloads decode-heavy --sides stock a2ats
    python -m benchmarks.suite --dry-run             # what would run, what is already done

Sides: ``stock`` (SGLang, FlashInfer, its radix cache), ``hicache`` (stock with
``--enable-hierarchical-cache``), ``a2ats`` (KV on the GPU), ``a2ats-offload`` (with host
memory), ``a2ats-shared`` (offload with one GPU cache for all requests,
``--a2ats-offload-cache shared``; decode-heavy and the shared document only) and ``a2ats-tiered``
(that, with tokens homed in HBM while it has room: ``--a2ats-gpu-homes``; the Llama workloads). Each side's server starts once per model and serves all of its pending workloads, then
stops. Each workload writes ``<results>/suite-<gpu>-<workload>.json``::

    {"meta": {...}, "workload": "<name>", "sides": {"stock": {...}, "a2ats": {...}, ...}}

after every side, so a stopped run resumes where it stopped: a side already in its file is
skipped (one with an ``error`` only with ``--retry-failed``). A side that cannot start, or a
workload that fails, is recorded with its ``error`` and the rest goes on. Every side's entry
carries its own commit, date and server command, since a resumed file may hold several runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import server as servers
from benchmarks.client import Endpoint, EndpointError
from benchmarks.meta import git_commit, gpu_short_name
from benchmarks.throughput import DECODE_LINE, offload_counters, offload_summary
from benchmarks.workloads import DoesNotFit, Workload, client_metrics, run_workload

LLAMA, QWEN25, QWEN3 = "llama-3.1-8b-shape", "qwen2.5-7b-shape", "qwen3-8b-shape"
ALL_SIDES = ("stock", "hicache", "a2ats", "a2ats-offload", "a2ats-shared", "a2ats-tiered")
BASIC_SIDES = ("stock", "a2ats", "a2ats-offload")
SHARED = ("a2ats-shared",)  # offload with one GPU cache for all requests (experimental), where it should matter
TIERED = ("a2ats-tiered",)  # both tiers as one capacity (experimental): the targets are on these

WORKLOADS = (
    Workload("prefill-heavy", LLAMA, "random", 32768, 256, BASIC_SIDES + TIERED),
    Workload("decode-heavy", LLAMA, "random", 32768, 1024, BASIC_SIDES + SHARED + TIERED),
    Workload("long", LLAMA, "random", 130560, 512, BASIC_SIDES + TIERED),  # 131,072 tokens: Llama-3.1's context
    Workload("multi-turn", LLAMA, "multi_turn", 32768, 256, ALL_SIDES[:4] + TIERED, conversations=64, turns=4,
             question_len=128),
    Workload("shared-document", LLAMA, "shared_document", 32768, 128, ALL_SIDES, question_len=128, questions=32),
    Workload("decode-heavy-qwen2.5-7b", QWEN25, "random", 31744, 1024, BASIC_SIDES),  # its context is 32,768
    Workload("decode-heavy-qwen3-8b", QWEN3, "random", 32768, 1024, BASIC_SIDES),
)

# One server per (model, side) serves every workload, so it is sized for the longest.
CONTEXT = {LLAMA: 131072, QWEN25: 32768, QWEN3: 34816}
HOST_GB = 96  # host memory for both host tiers (GB = 1e9 B); the H200 node has 128 GiB of RAM
COMMON_FLAGS = ["--load-format", "dummy", "--cuda-graph-max-bs", "64", "--cuda-graph-backend-prefill", "disabled",
                "--enable-metrics"]
SIDES: dict[str, tuple[str, list[str]]] = {  # side: (server kind, flags)
    # FlashInfer named: the node's sglang-kernel has no FA3 (SGLang's default on Hopper)
    "stock": ("stock", ["--attention-backend", "flashinfer"]),
    "hicache": ("stock", ["--attention-backend", "flashinfer", "--enable-hierarchical-cache", "--hicache-size", str(HOST_GB)]),
    "a2ats": ("a2ats", []),
    "a2ats-offload": ("a2ats", ["--a2ats-offload", "--a2ats-host-kv-gb", f"{HOST_GB * 1e9 / 2**30:.1f}"]),
    "a2ats-shared": ("a2ats", ["--a2ats-offload", "--a2ats-offload-cache", "shared",
                               "--a2ats-host-kv-gb", f"{HOST_GB * 1e9 / 2**30:.1f}"]),
    "a2ats-tiered": ("a2ats", ["--a2ats-offload", "--a2ats-offload-cache", "shared", "--a2ats-gpu-homes",
                               "--a2ats-host-kv-gb", f"{HOST_GB * 1e9 / 2**30:.1f}"]),
}
OFFLOAD_POOLS = re.compile(r"A²ATS offload: host pool (\d+) tokens")
OFFLOAD_GPU_ROWS = re.compile(r"A²ATS offload: pinned host KV pool .*GPU KV tensors (\d+) slots \((\d+) of them homes")


@dataclass(frozen=True)
class Group:
    """One server (a side on a model) and the workloads it serves."""

    model: str
    side: str
    workloads: tuple[Workload, ...]


def result_path(results: Path, gpu: str, workload: str) -> Path:
    return results / f"suite-{gpu}-{workload}.json"


def load_result(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise SystemExit(f"benchmarks.suite: error: {path} is not valid JSON; move it away to start that workload afresh") from None


def pending(w: Workload, side: str, results: Path, gpu: str, retry_failed: bool, rerun: bool = False) -> bool:
    done = (load_result(result_path(results, gpu, w.name)) or {}).get("sides", {}).get(side)
    return rerun or done is None or (retry_failed and "error" in done)


def plan(workloads: Sequence[Workload], sides: Sequence[str], results: Path, gpu: str, retry_failed: bool,
         rerun: bool = False) -> list[Group]:
    """Pending (workload, side) pairs grouped by server, in model order, then side order (stock
    first, so a2ats is compared with a stock measured alongside)."""
    groups = []
    for model in dict.fromkeys(w.model for w in workloads):
        for side in ALL_SIDES:
            if side not in sides:
                continue
            todo = tuple(w for w in workloads if w.model == model and side in w.sides
                         and pending(w, side, results, gpu, retry_failed, rerun))
            if todo:
                groups.append(Group(model, side, todo))
    return groups


def record(path: Path, w: Workload, side: str, entry: dict[str, Any], meta: dict[str, Any]) -> None:
    """Add ``side`` to the workload's file (written whole, atomically)."""
    report = load_result(path) or {"meta": {}, "workload": w.name, "sides": {}}
    report["meta"] = {**report["meta"], **meta}
    report["sides"][side] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def log_since(log: Path, offset: int) -> str:
    try:
        with open(log, errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def decode_metrics(log_text: str) -> dict[str, Any]:
    """From SGLang's "Decode batch" lines: the most requests running at once, and the decode rate
    with (nearly) that many running, the median over those lines (one per 40 steps)."""
    lines = [(int(m[1]), float(m[2])) for m in DECODE_LINE.finditer(log_text)]
    if not lines:
        return {"max_concurrency": None, "steady_decode_tokens_per_s": None}
    most = max(r for r, _ in lines)
    steady = statistics.median(rate for r, rate in lines if r >= 0.9 * most)
    return {"max_concurrency": most, "steady_decode_tokens_per_s": round(steady, 1)}


def kv_tiers(side: str, info: dict[str, Any], log_text: str, bytes_per_token: int) -> dict[str, int | None]:
    """Tokens of KV each tier holds as a home. Offload: SGLang admits against its logical slots
    (``max_total_num_tokens``): GPU homes (``a2ats-tiered`` only), then host rows; the other GPU
    rows are prefill staging and the cache of picks, copies rather than capacity, reported apart."""
    capacity = int(info["max_total_num_tokens"])
    if side in ("a2ats-offload", "a2ats-shared", "a2ats-tiered"):
        rows = OFFLOAD_GPU_ROWS.search(log_text)
        homes = int(rows[2]) if rows else 0
        return {"gpu": homes, "host": capacity - homes,
                "gpu_staging_and_hot_rows": int(rows[1]) - homes if rows else None}
    if side == "hicache":  # SGLang sizes its host pool from --hicache-size, in GB of KV
        return {"gpu": capacity, "host": int(HOST_GB * 1e9 // bytes_per_token) if bytes_per_token else None}
    return {"gpu": capacity, "host": 0}


def a2ats_state(url: str) -> dict[str, Any] | None:
    """What an a2ats server says of its backend in ``/server_info`` (None for stock SGLang, or
    a server that does not answer)."""
    try:
        states = Endpoint(url).check().get("internal_states") or [{}]
    except EndpointError:
        return None
    return states[0].get("a2ats") if isinstance(states[0], dict) else None


def kv_bytes_per_token(model_dir: Path) -> int:
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * 2
    except (OSError, KeyError, ValueError):
        return 0


def run_side(server: servers.Server, watch: servers.MemoryWatch, info: dict[str, Any], w: Workload, side: str,
             bytes_per_token: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """One workload against a running server: client metrics plus what the server says."""
    offset = server.log.stat().st_size if server.log.exists() else 0
    counters = offload_counters(server.url)
    watch.reset()
    capacity = int(info["max_total_num_tokens"])
    max_running = int(info.get("max_running_requests") or 1 << 30)
    run = run_workload(w, lambda: Endpoint(server.url, timeout=3600), capacity, max_running)
    text = log_since(server.log, offset)
    entry = client_metrics(run)
    entry.update(decode_metrics(text))
    entry["kv_capacity_tokens"] = capacity
    entry["kv_capacity_tiers"] = kv_tiers(side, info, log_since(server.log, 0), bytes_per_token)
    entry["peak_gpu_memory_mib"] = watch.gpu_mib
    entry["peak_host_rss_gib"] = round(watch.host_gib, 1)
    entry.update(offload_summary(counters, offload_counters(server.url)))
    state = a2ats_state(server.url)
    if state is not None:
        entry["a2ats_state"] = state
    progress(f"{entry['output_tokens_per_s']} output tok/s, TTFT p50 {entry['ttft_p50_ms']} ms, "
             f"{entry['total_s']} s, at most {entry['max_concurrency']} running")
    return entry


def run_group(g: Group, args: argparse.Namespace, gpu: str, progress: Callable[[str], None]) -> None:
    kind, flags = SIDES[g.side]
    model_dir = Path(args.models_dir) / g.model
    server_flags = [*COMMON_FLAGS, "--context-length", str(CONTEXT.get(g.model, 32768)), *flags, *shlex.split(args.server_args)]
    log = Path(args.log_dir) / f"server-suite-{g.side}-{g.model}.log"
    base = {"commit": git_commit(), "date": _now(), "server_command": None}
    meta = {"gpu": gpu, "device": args.device_name, "commit": base["commit"], "command": _command(), "date": base["date"]}
    server = watch = None

    def save(w: Workload, entry: dict[str, Any]) -> None:
        record(result_path(Path(args.results), gpu, w.name), w, g.side, entry, {**meta, **_workload_meta(w)})

    try:
        progress(f"starting {g.side} on {g.model}")
        server = servers.Server(kind, str(model_dir), args.port, server_flags, log)
        base["server_command"] = shlex.join(server.cmd[1:])
        watch = servers.MemoryWatch(server.proc.pid)
        base["startup_s"] = round(server.wait_healthy(args.startup_timeout), 1)
        info = Endpoint(server.url).check()
    except (RuntimeError, EndpointError, OSError) as e:
        for w in g.workloads:
            save(w, {**base, "error": f"the server did not start: {e}"})
        progress(f"{g.side} on {g.model} did not start: {str(e).splitlines()[0]}")
        if server is not None:
            server.stop()
        if watch is not None:
            watch.stop()
        return
    try:
        for w in g.workloads:
            progress(f"{w.name} × {g.side}")
            started = time.time()
            try:
                entry = {**base, **run_side(server, watch, info, w, g.side, kv_bytes_per_token(model_dir),
                                            lambda m: progress(f"{w.name} × {g.side}: {m}"))}
            except (DoesNotFit, RuntimeError, EndpointError, OSError, ValueError) as e:
                entry = {**base, "error": str(e), "failed_after_s": round(time.time() - started, 1)}
                progress(f"{w.name} × {g.side} failed: {e}")
                if server.proc.poll() is not None:
                    entry["error"] += f" (the server exited with code {server.proc.returncode}; log tail: {server.tail(5)})"
            save(w, entry)
            if server.proc.poll() is not None:
                for rest in g.workloads[g.workloads.index(w) + 1:]:
                    save(rest, {**base, "error": "not run: the server had exited"})
                return
    finally:
        server.stop()
        watch.stop()


def _workload_meta(w: Workload) -> dict[str, Any]:
    return {"model": w.model + " (dummy weights)", "workload": w.describe()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _command() -> str:
    return shlex.join(["python3", "-m", "benchmarks.suite", *sys.argv[1:]])


def build_parser() -> argparse.ArgumentParser:
    names = [w.name for w in WORKLOADS]
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=names, default=names, metavar="NAME",
                   help=f"workloads to run. Default: all ({', '.join(names)})")
    p.add_argument("--sides", nargs="+", choices=ALL_SIDES, default=list(ALL_SIDES), help="sides to run. Default: all")
    p.add_argument("--models-dir", default="/tmp/models", help="holds the model directories. Default: %(default)s")
    p.add_argument("--results", default="benchmarks/results", help="result files. Default: %(default)s")
    p.add_argument("--log-dir", default="/tmp/suite-logs", help="server logs. Default: %(default)s")
    p.add_argument("--gpu", default=None, help="short GPU name in the file names. Default: from the device (h200)")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--server-args", default="", help="extra flags for every server, one string")
    p.add_argument("--startup-timeout", type=float, default=1200.0, help="seconds for a server to get healthy")
    p.add_argument("--retry-failed", action="store_true", help="run again the sides recorded with an error")
    p.add_argument("--rerun", action="store_true",
                   help="run the selected workloads and sides again even where recorded (a new commit's numbers)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gpu is None:
        from benchmarks.meta import device_name

        args.device_name = device_name("cuda")
        args.gpu = gpu_short_name(args.device_name)
    else:
        args.device_name = args.gpu
    workloads = [w for w in WORKLOADS if w.name in args.workloads]
    groups = plan(workloads, args.sides, Path(args.results), args.gpu, args.retry_failed, args.rerun)
    total = sum(len(g.workloads) for g in groups)
    print(f"[suite] {args.gpu}: {total} (workload, side) runs pending on {len(groups)} servers", flush=True)
    for g in groups:
        print(f"[suite]   {g.side} on {g.model}: {', '.join(w.name for w in g.workloads)}", flush=True)
    if args.dry_run or not groups:
        return 0
    started = time.time()
    done = 0

    def progress(message: str) -> None:
        print(f"[suite] {time.time() - started:7.0f} s  {message}", flush=True)

    for g in groups:
        run_group(g, args, args.gpu, progress)
        done += len(g.workloads)
        progress(f"{done}/{total} runs done")
    failed = [(w.name, g.side) for g in groups for w in g.workloads
              if "error" in (load_result(result_path(Path(args.results), args.gpu, w.name)) or {}).get("sides", {}).get(g.side, {})]
    for name, side in failed:
        print(f"[suite] FAILED {name} × {side}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
