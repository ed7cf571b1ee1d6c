"""The score kernel alone, over layouts and grids: which bytes bind the score stage.

    python -m benchmarks.score_probe --batch 8 32 --out /root/out/score-probe-h200.json

At batch 32 and 32K the score kernel takes ~107 µs a layer on the H200 for 8.4M scores, about
14 bytes of DRAM each at most, so it runs far from its bytes. Each variant here times a CUDA
graph of every layer's score launch (no top-K) and changes one thing:

- ``slots``: ``random`` places each request's tokens at random KV slots (``benchmarks.decode_step``'s
  layout, the worst case: every code load is its own sector), ``contiguous`` in one run of
  slots each (a prefill's chunks are contiguous in SGLang's allocator);
- ``codes``: ``token`` is today's ``[slots, Hkv]`` rows (a kv head's load uses 2 bytes of
  each 16), ``head`` a ``[Hkv, slots]`` layout viewed through the same strides;
- ``run_target`` and ``warps``: programs per SM (``kernels.score.RUN_TARGET``) and warps per
  program (``SCORE_WARPS``): few, long programs keep a row's bucket table in one SM's L1.

Every layer reads its own codes, as a model's do, and the one lookup table the decoder refills
a layer. The scores are the same bits in every variant (a test checks the layouts).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from benchmarks.decode_step import ROOT, prepare, slot_table, step_parser, time_graph
from benchmarks.kernel_tuning import patched
from benchmarks.meta import write_results

SCORE = "a2ats_sglang.kernels.score"


def head_major(codes: torch.Tensor) -> torch.Tensor:
    """``codes`` ``[layers, slots, Hkv]`` copied into ``[layers, Hkv, slots]`` memory, viewed back
    as ``[layers, slots, Hkv]``: each kv head's codes contiguous."""
    layers, slots, heads = codes.shape
    out = torch.empty(layers, heads, slots, dtype=codes.dtype, device=codes.device).permute(0, 2, 1)
    out.copy_(codes)
    return out


def run_batch(args, config: dict, bs: int) -> dict:
    from a2ats_sglang.kernels.score import score_tokens

    st = prepare(args, config, bs)
    dec, buffers, n = st.dec, st.buffers, st.context
    lut = st.stages["lookup_table"]()
    dec.codes.random_(0, args.codebook_size)
    codes = {"token": dec.codes, "head": head_major(dec.codes)}
    r2t = {layout: slot_table(layout, bs, n, st.req_to_token.shape[1], "cuda") for layout in args.slot_layouts}
    rpi = torch.arange(1, bs + 1, device="cuda")
    seq_lens = torch.full((bs,), n, device="cuda")
    heads = dec.num_kv_heads
    rows = bs * heads
    layer = [0]

    def score(c: torch.Tensor, t: torch.Tensor) -> None:
        score_tokens(lut, c[layer[0] % st.layers], t, rpi, seq_lens, dec.edges, dec.budget.sinks, dec.budget.window,
                     buffers.scores, pad=False)
        layer[0] += 1

    k = int(buffers.counts[0])
    results = []
    for slots, layout, run_target, warps in itertools.product(args.slot_layouts, args.codes, args.run_target, args.warps):
        with patched(SCORE, "RUN_TARGET", run_target), patched(SCORE, "SCORE_WARPS", warps):
            row = {"slots": slots, "codes": layout, "run_target": run_target, "warps": warps}
            try:
                layer[0] = 0
                row["ms"] = round(time_graph(lambda: score(codes[layout], r2t[slots]), st.layers, args.iters), 4)
            except Exception as e:  # a grid the GPU cannot launch: recorded, the sweep goes on
                row["error"] = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps({"batch": bs, **row}), flush=True)
        results.append(row)
    scores = rows * n * st.layers
    return {"batch": bs, "layers": st.layers, "scores_per_step": scores, "kept_tokens_per_kv_head": k,
            "variants": results}


def main(argv: list[str] | None = None) -> int:
    p = step_parser("python -m benchmarks.score_probe", __doc__)
    p.add_argument("--slot-layouts", nargs="+", default=["random", "contiguous"], choices=["random", "contiguous"])
    p.add_argument("--codes", nargs="+", default=["token", "head"], choices=["token", "head"])
    p.add_argument("--run-target", type=int, nargs="+", default=[32, 4, 1])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/score-probe.json"))
    args = p.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    rows = []
    for bs in args.batch:
        rows.append(run_batch(args, config, bs))
        torch.cuda.empty_cache()
    workload = {k: getattr(args, k) for k in ("context", "batch", "ratio", "budget_max", "wrope", "codebook_size",
                                               "slot_layouts", "codes", "run_target", "warps")}
    write_results(args.out, "cuda", Path(args.config).name, workload, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
