"""Grid and block knobs of the decode kernels, each value timed at each batch size.

    python -m benchmarks.kernel_tuning --batch 1 8 32 --out /root/out/kernel-tuning-h200.json

The knobs only decide which program computes what (the picks and the table are the same bits
for every value; ``tests/test_kernels.py`` and ``tests/test_lut.py`` check that), so they are
tuned by time alone. Each value is patched into its module, and the stage it drives is timed as
``benchmarks.decode_step`` times it: a CUDA graph of every layer's call, over replays. The
default is marked in the output so a change to it is a measured one.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.decode_step import ROOT, prepare, step_parser, time_graph
from benchmarks.meta import write_results

# (module, constant, values, the stage it drives)
KNOBS: tuple[tuple[str, str, tuple[Any, ...], str], ...] = (
    ("a2ats_sglang.kernels.lut", "WAVES", (1, 2, 4, 8), "lookup_table"),
    ("a2ats_sglang.kernels.lut", "MIN_TILES", (1, 2, 4), "lookup_table"),
    # 64 columns need 165 registers a thread at 8 warps (one program per SM), 32 need 91 (two)
    ("a2ats_sglang.kernels.lut", "COLUMNS", (32, 64), "lookup_table"),
    # 128 codewords a tile: 222 registers a thread at 8 warps against 165 (one program per SM either way)
    ("a2ats_sglang.kernels.lut", "BLOCK_C", (64, 128), "lookup_table"),
    ("a2ats_sglang.kernels.score", "RUN_TARGET", (4, 8, 16, 32, 64), "score_topk"),
    ("a2ats_sglang.kernels.score", "HEADS_PER_PROGRAM", (1, 2, 4, 8), "score_topk"),
    ("a2ats_sglang.kernels.select", "MAX_PROGRAMS", (512, 1024, 2048, 4096), "score_topk"),
    ("a2ats_sglang.kernels.select", "SELECT_STAGES", ((1, 1), (1, 2), (2, 2)), "score_topk"),
    ("a2ats_sglang.kernels.select", "MANY_ROWS_SPLITS", (2, 4, 8, 16), "score_topk"),
    # the top-K in one launch where rows × splits fit one program an SM (0: a launch per pass)
    ("a2ats_sglang.kernels.select", "FUSED_PROGRAMS_PER_SM", (0, 1), "score_topk"),
    ("a2ats_sglang.kernels.select", "SPLIT_CONFIG", ((4, 1024), (4, 2048), (8, 2048), (8, 4096)), "score_topk"),
)
# prefill's encode (one chunk of CHUNK keys a layer): the same at every batch, swept once; every
# tiling fits sm_90's 227 KiB of shared memory (tests/test_kernel_compile.py)
ENCODE_KNOBS: tuple[tuple[str, str, tuple[Any, ...], str], ...] = (
    ("a2ats_sglang.kernels.encode", "LARGE_CONFIG",
     ((128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 8, 3), (64, 32, 8, 3), (32, 64, 8, 1), (128, 32, 8, 2)),
     "encode_chunk"),
)
# the decode step's encode of its due keys, every layer in one launch (timed as one call)
DUE_KNOBS: tuple[tuple[str, str, tuple[Any, ...], str], ...] = (
    ("a2ats_sglang.kernels.encode", "SMALL_WARPS", (4, 8), "encode_due"),
)
CHUNK = 8192  # SGLang's default --chunked-prefill-size on a GPU this large


def encode_chunk(st: Any, tokens: int = CHUNK) -> Callable[[], None]:
    """One layer's encode of a prefill chunk: ``tokens`` post-RoPE keys into fresh slots."""
    dec = st.dec
    k = torch.randn(tokens, dec.num_kv_heads * dec.head_dim, dtype=torch.bfloat16, device="cuda")
    loc = torch.arange(1, tokens + 1, device="cuda")
    tables = dec.rotary.key_tables(torch.arange(tokens, device="cuda"))
    return lambda: dec.encode(0, k, loc, tables)


@contextmanager
def patched(module: str, name: str, value: Any) -> Iterator[None]:
    mod = importlib.import_module(module)
    old = getattr(mod, name)
    setattr(mod, name, value)
    try:
        yield
    finally:
        setattr(mod, name, old)


def sweep(stage: Callable[[], object], layers: int, module: str, name: str, values: tuple[Any, ...],
          iters: int) -> dict[str, float | str]:
    """Milliseconds of a whole step's ``stage`` for each value of ``module.name`` (a value that
    fails, say one the GPU cannot launch, records its error and the sweep goes on)."""
    out: dict[str, float | str] = {}
    for value in values:
        with patched(module, name, value):
            try:
                out[json.dumps(value)] = round(time_graph(stage, layers, iters), 4)
            except Exception as e:  # noqa: BLE001 - recorded in the results, never hidden
                out[json.dumps(value)] = f"error: {type(e).__name__}: {str(e)[:200]}"
                torch.cuda.synchronize()
    return out


def main(argv: list[str] | None = None) -> int:
    p = step_parser("python -m benchmarks.kernel_tuning", __doc__)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/kernel-tuning.json"))
    p.add_argument("--knobs", nargs="+", metavar="NAME",
                   help="sweep only these knobs (constant names, or DISABLE_SPLIT_KV); default: all")
    p.set_defaults(batch=[1, 8, 32])
    args = p.parse_args(argv)
    every = {name for _, name, _, _ in KNOBS + DUE_KNOBS + ENCODE_KNOBS} | {"DISABLE_SPLIT_KV"}
    if args.knobs and not set(args.knobs) <= every:
        p.error(f"unknown knobs {sorted(set(args.knobs) - every)}; known: {sorted(every)}")
    wanted = set(args.knobs or every)
    config = json.loads(Path(args.config).read_text())
    rows = []
    for bs in args.batch:
        st = prepare(args, config, bs)
        row: dict[str, Any] = {"batch": bs, "layers": st.layers}
        stages = {**st.stages, "encode_due": partial(st.encode, st.tables.due)}
        calls = {"encode_due": 1}  # one launch covers every layer
        knobs = KNOBS + DUE_KNOBS
        if not rows:  # the first batch also times prefill's encode
            stages["encode_chunk"] = encode_chunk(st)
            knobs += ENCODE_KNOBS
        for module, name, values, stage in (k for k in knobs if k[1] in wanted):
            default = getattr(importlib.import_module(module), name)
            row[name] = {"stage": stage, "default": json.dumps(default),
                         "ms": sweep(stages[stage], calls.get(stage, st.layers), module, name, values, args.iters)}
        # FlashInfer's split KV (its merge kernel is 86 µs a step at batch 1): off against on
        if "DISABLE_SPLIT_KV" in wanted:
            split = {}
            for disable in (False, True):
                st.replan(disable)
                split[json.dumps(disable)] = round(time_graph(st.stages["attention"], st.layers, args.iters), 4)
            st.replan(False)
            row["DISABLE_SPLIT_KV"] = {"stage": "attention", "default": "false", "ms": split}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del st, stages  # this batch's buffers go before the next batch's
        torch.cuda.empty_cache()
    workload = {k: getattr(args, k) for k in ("context", "graph_context", "batch", "ratio", "budget_max", "wrope",
                                              "codebook_size", "knobs")}
    write_results(args.out, "cuda", Path(args.config).name, workload, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
