"""Offload mode's per-layer KV fetch: time and PCIe bytes of ``fetch_hot`` at a miss rate.

    python -m benchmarks.fetch_step --batch 1 8 16 --miss 0 0.05 0.2 1.0

Each (request, kv head) row picks ``width`` tokens of a ``context``-token request whose K/V lie
in pinned host memory; each call's picks slide along a ring of tokens by ``miss·width``, so
every call copies that many tokens per row from host memory into the row's hot buffer (new
tokens, never resident) and the ring closes after ``layers`` calls. Calls are captured
``layers`` at a time in a CUDA graph, as in the decode graph. The score row the fetch uses as scratch is refilled before
each call (as the score kernel does in the real step); that refill is timed alone and taken off.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.decode_step import shape_parser, time_graph
from benchmarks.meta import write_results

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = shape_parser("python -m benchmarks.fetch_step", __doc__)
    p.add_argument("--width", type=int, default=1056, help="picked tokens per (request, kv head)")
    p.add_argument("--hot-tokens", type=int, default=2048, help="hot-buffer slots per request")
    p.add_argument("--miss", type=float, nargs="+", default=[0.0, 0.05, 0.2, 1.0], help="fractions of picks not resident")
    p.add_argument("--layers", type=int, default=32, help="calls per graph")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/fetch-step.json"))
    return p


def run(args: argparse.Namespace, config: dict, bs: int, miss: float) -> dict:
    from a2ats_sglang.kernels.hot_buffer import fetch_hot

    dev = "cuda"
    hkv = config["num_key_value_heads"]
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    n, width, hot = args.context, args.width, args.hot_tokens
    rows = bs * hkv
    g = torch.Generator(device=dev).manual_seed(0)
    logical = bs * n + 1
    host_k = torch.randn(logical, hkv, dim, dtype=torch.bfloat16).pin_memory()
    host_v = torch.randn(logical, hkv, dim, dtype=torch.bfloat16).pin_memory()
    dev_k = torch.zeros(1 + bs * hot, hkv, dim, dtype=torch.bfloat16, device=dev)
    dev_v = torch.zeros_like(dev_k)
    req_to_token = torch.zeros(bs + 1, n, dtype=torch.int32, device=dev)
    req_to_token[1:] = (torch.randperm(logical - 1, device=dev, generator=g)[: bs * n] + 1).view(bs, n).int()
    rpi = torch.arange(1, bs + 1, device=dev)
    seq_lens = torch.full((bs,), n, device=dev)
    hot_slots = (1 + torch.arange(bs * hot, device=dev, dtype=torch.int32)).view(bs, hot)
    hot_slots = torch.cat([torch.zeros(1, hot, dtype=torch.int32, device=dev), hot_slots])  # row 0: padding
    hot_tokens = torch.full((bs + 1, hkv, hot), -1, dtype=torch.int32, device=dev)
    hand = torch.zeros(bs + 1, hkv, dtype=torch.int32, device=dev)
    victims = torch.zeros(rows, 2 * hot, dtype=torch.int32, device=dev)
    stats = torch.zeros(rows, 2, dtype=torch.int32, device=dev)
    counts = torch.full((rows,), width, dtype=torch.int32, device=dev)
    indptr = torch.arange(rows + 1, dtype=torch.int32, device=dev) * width
    out = torch.zeros(rows * width, dtype=torch.int32, device=dev)
    # a ring of tokens per row; call i picks `width` of them from offset i·new
    new = round(miss * width)
    # the ring closes after `layers` calls; one no longer than the request wraps early (the
    # reported hit rate is the kernel's own count, so it says what was measured)
    ring_len = width if new == 0 else min(n, max(width, args.layers * new))
    if new and args.layers * new < width:
        raise SystemExit(f"--miss {miss}: {args.layers} calls of {new} new tokens do not close a ring of {width}")
    ring = torch.argsort(torch.rand(rows, n, device=dev, generator=g), dim=1)[:, :ring_len].int()
    offsets = torch.arange(width, device=dev)
    picks = [ring[:, (i * new + offsets) % ring_len].sort(dim=1).values.contiguous() for i in range(args.layers)]
    base = torch.randn(rows, n, device=dev, generator=g)
    scores = torch.empty_like(base)

    def refill() -> None:
        scores.copy_(base)

    step = [0]

    def fetch() -> None:  # the next call of the ring
        refill()
        fetch_hot(picks[step[0] % args.layers], counts, scores, req_to_token, rpi, seq_lens, hot_slots, hot_tokens,
                  hand, victims, host_k, host_v, dev_k, dev_v, indptr, out, stats, rows)
        step[0] += 1

    hits = misses = 0
    for cycle in range(2):  # the first cycle fills the hot buffers; the second is the steady state
        for _ in range(args.layers):
            fetch()
            if cycle:
                hits, misses = hits + int(stats[:, 0].sum()), misses + int(stats[:, 1].sum())
    fetch_ms = time_graph(fetch, args.layers, args.iters)
    refill_ms = time_graph(refill, args.layers, args.iters)
    per_call = (fetch_ms - refill_ms) / args.layers
    bytes_per_call = misses // args.layers * 2 * dim * host_k.element_size()
    return {
        "batch": bs, "miss": miss, "width": width, "hot_tokens": hot, "hit_rate": round(hits / (hits + misses), 4),
        "fetch_us_per_layer": round(per_call * 1000, 2), "pcie_bytes_per_layer": bytes_per_call,
        "pcie_gb_per_s": round(bytes_per_call / (per_call * 1e-3) / 1e9, 2) if per_call > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    rows = []
    for bs in args.batch:
        for miss in args.miss:
            row = run(args, config, bs, miss)
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    workload = {k: getattr(args, k) for k in ("context", "batch", "width", "hot_tokens", "miss", "layers")}
    write_results(args.out, "cuda", Path(args.config).name, workload, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
