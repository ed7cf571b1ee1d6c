"""Decode attention time per step, A²ATS sparse vs stock FlashInfer, with the split.

    python -m benchmarks.decode_step --config tests/configs/llama-3.1-8b.json --context 32768 --batch 1 8 16

Times the attention part of one decode step (every layer) at a model's shape on random KV,
without loading a model: stock = SGLang's FlashInfer paged decode over each request's whole
context; A²ATS = per layer lookup table → score every token → top-K and index write →
FlashInfer decode over the picked tokens, then one launch encoding the keys due in every
layer. Each variant (and each A²ATS stage alone) is captured in a CUDA graph of a whole step
(``layers`` back-to-back calls), as in SGLang's decode graph, and timed over replays. Keys
are encoded in groups of ``encode_group`` positions, so a request's step is "due" once per
group and "idle" otherwise; ``a2ats_ms`` is their average over a group. The rest of a decode step (weights, MLP) is the same for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.meta import device_name, write_results
from benchmarks.step_bytes import PEAK_BANDWIDTH, StepShape, gbps, minimum_bytes, stage_bytes, step_bytes, stock_bytes

ROOT = Path(__file__).resolve().parent.parent


def shape_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The arguments the step benchmarks share: model shape, context, batch sizes."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "tests/configs/llama-3.1-8b.json"), help="HF config.json of the model shape")
    p.add_argument("--context", type=int, default=32768, help="tokens per request")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    return p


def build_parser() -> argparse.ArgumentParser:
    p = step_parser("python -m benchmarks.decode_step", __doc__)
    p.add_argument("--profile", action="store_true",
                   help="also record each kernel's time per step (CUPTI, inside the replayed graph)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/decode-step.json"))
    return p


def step_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """:func:`shape_parser` and the sparse decoder's settings and timing."""
    p = shape_parser(prog, doc)
    p.add_argument("--ratio", type=float, default=0.03, help="budget ratio")
    p.add_argument("--budget-max", type=int, default=4096)
    p.add_argument("--wrope", choices=["single", "bucketed"], default="bucketed")
    p.add_argument("--codebook-size", type=int, default=4096)
    p.add_argument("--graph-context", type=int, default=None,
                   help="static context length the decode buffers are sized for, as a server's "
                        "context_len (default: --context + 64)")
    p.add_argument("--layers", type=int, default=None, help="layers per step (default: the model's)")
    p.add_argument("--iters", type=int, default=20, help="graph replays timed per variant")
    p.add_argument("--slots", choices=["contiguous", "random"], default="contiguous",
                   help="where each request's KV slots lie: one run each, as a server's prefills get them, "
                        "or scattered (results before 2026-12-03 were measured so)")
    return p


def layer_graph(fn: Callable[[], object], layers: int) -> torch.cuda.CUDAGraph:
    """A graph of ``layers`` back-to-back calls of ``fn`` (compiled first, replayed once)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(layers):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def time_graph(fn: Callable[[], object], layers: int, iters: int) -> float:
    """Mean milliseconds of one replay of a graph holding ``layers`` calls of ``fn``."""
    graph = layer_graph(fn, layers)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


# kernels launched several times a layer, told apart by their launch's rank in the layer: the
# split top-K's histogram passes 1-3 (pass 0 is counted in the score kernel)
BY_RANK = {"_split_hist_kernel": ("pass 1", "pass 2", "pass 3")}


def _short(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def per_kernel(launches: list[tuple[str, float, float]], iters: int) -> dict[str, float]:
    """``(name, start, µs)`` of every kernel launched over ``iters`` replays → µs per replay by
    kernel (``name ×launches``), the kernels of :data:`BY_RANK` split by launch rank, largest first."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    seen: dict[str, int] = {}
    for name, _, us in sorted(launches, key=lambda x: x[1]):
        ranks = BY_RANK.get(name)
        if ranks:
            i = seen.get(name, 0)
            seen[name] = i + 1
            name = f"{name} {ranks[i % len(ranks)]}"
        name = _short(name)
        totals[name] = totals.get(name, 0.0) + us
        counts[name] = counts.get(name, 0) + 1
    out = {f"{n} ×{counts[n] // iters}": round(t / iters, 1) for n, t in totals.items()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def kernel_times(fn: Callable[[], object], layers: int, iters: int = 5) -> dict[str, float]:
    """Microseconds per replay of a ``layers``-call graph of ``fn``, by kernel name, with how many
    launches of each (the top-K's passes apart): where inside a stage the time goes."""
    from torch.profiler import ProfilerActivity, profile

    graph = layer_graph(fn, layers)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            graph.replay()
        torch.cuda.synchronize()
    try:  # every launch, in order
        launches = [(e.name, e.time_range.start, e.time_range.elapsed_us()) for e in prof.events()
                    if e.device_type.name == "CUDA"]
        if launches:
            return per_kernel(launches, iters)
    except AttributeError:  # a profiler without per-launch events: by name only
        pass
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.count:
            out[f"{_short(e.key)} ×{e.count // iters}"] = round(e.device_time_total / iters, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclasses.dataclass
class Step:
    """One batch's decode step on random KV: the decoder, its buffers and each stage as a
    callable of one layer (``stages``) or of the whole step (``sparse_step``, ``encode``)."""

    layers: int
    dec: Any
    buffers: Any
    tables: Any
    idle_keys: Any
    stages: dict[str, Callable[[], object]]
    sparse_step: Callable[[Any], None]
    encode: Callable[[Any], None]
    step_tables: Callable[[], object]
    model: Any  # the codebook's ModelIdentity: heads, head_dim, layers
    context: int
    q: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    req_to_token: torch.Tensor
    workspace: torch.Tensor
    replan: Callable[[bool], None]  # FlashInfer's plan again, with split KV off (True) or on


def slot_table(layout: str, bs: int, n: int, context_len: int, dev: str) -> torch.Tensor:
    """``req_to_token`` ``[bs + 1, context_len]``: request slot ``b`` (from 1) holds ``n`` KV slots,
    ``contiguous`` as one run each (SGLang's allocator hands a prefill the lowest free slots,
    sorted, so a long prompt's KV lies in long runs) or ``random`` (every slot anywhere: the
    worst case for the code loads, no different for stock's 256-byte KV rows)."""
    out = torch.zeros(bs + 1, context_len, dtype=torch.int32, device=dev)
    order = torch.arange(bs * n, device=dev) if layout == "contiguous" else torch.randperm(bs * n, device=dev)
    out[1:, :n] = (order + 1).view(bs, n).int()
    return out


def prepare(args: argparse.Namespace, config: dict, bs: int) -> Step:
    from a2ats_sglang.kernels.score import score_tokens
    from a2ats_sglang.kernels.select import select_and_write
    from a2ats_sglang.method.codebook import Codebook, ModelIdentity
    from a2ats_sglang.runtime.backend import build_decoder
    from a2ats_sglang.runtime.config import A2ATSConfig
    from a2ats_sglang.runtime.sparse_decode import SparseDecodeBuffers

    dev = "cuda"
    book = Codebook.random(ModelIdentity.from_hf_config(config), args.codebook_size)
    m = book.meta.model
    layers = args.layers or m.num_layers
    n = args.context
    slots = bs * n + 1
    context_len = args.graph_context or n + 64
    cfg = A2ATSConfig(codebook="unused", budget_ratio=args.ratio, budget_max=args.budget_max, wrope=args.wrope)
    dec = build_decoder(cfg, book, slots, context_len, dev)
    dec.codes[0].random_(0, args.codebook_size)
    k_pool = torch.randn(slots, m.num_kv_heads, m.head_dim, dtype=torch.bfloat16, device=dev)
    v_pool = torch.randn_like(k_pool)
    req_to_token = slot_table(args.slots, bs, n, context_len, dev)
    rpi = torch.arange(1, bs + 1, device=dev)
    seq_lens = torch.full((bs,), n, device=dev)
    positions = seq_lens - 1
    q = torch.randn(bs, m.num_attention_heads, m.head_dim, dtype=torch.bfloat16, device=dev)
    workspace = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    scale = m.head_dim**-0.5

    buffers = SparseDecodeBuffers(bs, m.num_kv_heads, context_len, dec.width, args.codebook_size, dec.num_buckets, dev,
                                  layers=dec.num_layers)
    wrapper = dec.new_wrapper(workspace, buffers, bs)
    buffers.set_counts(seq_lens, dec.budget)
    dec.plan(wrapper, buffers, seq_lens.cpu(), torch.bfloat16, torch.bfloat16)
    dec.plan(wrapper, buffers, seq_lens.cpu(), torch.bfloat16, torch.bfloat16)
    tables = dec.step_tables(positions, req_to_token, rpi)  # every request completes an encode group
    idle_keys = dec.due_keys(req_to_token, rpi, positions - 1)  # a step earlier none does
    lut = dec.lookup_table(0, q, tables.queries, buffers.lut)
    # the encode launch covers the model's layers (the codebook's), each reading this one pool
    key_pointers = torch.full((dec.num_layers,), k_pool.data_ptr(), dtype=torch.int64, device=dev)

    def score() -> None:  # without the top-K's first-pass counting
        score_tokens(lut, dec.codes[0], req_to_token, rpi, seq_lens, dec.edges, dec.budget.sinks,
                     dec.budget.window, buffers.scores, pad=False)

    def topk() -> None:  # with its first pass: alone, the counts would be missing
        select_and_write(buffers.scores, buffers.counts, buffers.indptr, req_to_token, rpi,
                         m.num_kv_heads, bs * m.num_kv_heads, buffers.picks, buffers.indices, buffers.topk_ws,
                         seq_lens=seq_lens)

    def score_topk() -> None:  # the serving pair, as the decoder picks
        dec.pick(0, lut, req_to_token, rpi, seq_lens, buffers)

    def encode(due) -> None:  # the step's due keys of every layer, in one launch after the last layer
        dec.encode_pool_layers(key_pointers, k_pool, due, buffers.encode_ws)

    def sparse_step(due) -> None:  # as the backend runs it: every layer's selection and attention
        for _ in range(layers):
            dec.select(0, q, tables.queries, req_to_token, rpi, seq_lens, buffers)
            dec.attend(wrapper, q, k_pool, v_pool, scale)
        encode(due)

    stages = {
        "lookup_table": lambda: dec.lookup_table(0, q, tables.queries, buffers.lut),
        "score": score,  # these two without the counting, each alone
        "topk": topk,
        "score_topk": score_topk,
        "attention": lambda: dec.attend(wrapper, q, k_pool, v_pool, scale),
    }
    def replan(disable_split_kv: bool) -> None:
        dec.plan(wrapper, buffers, seq_lens.cpu(), torch.bfloat16, torch.bfloat16, disable_split_kv=disable_split_kv)

    return Step(layers, dec, buffers, tables, idle_keys, stages, sparse_step, encode,
                lambda: dec.step_tables(positions, req_to_token, rpi), m, n, q, k_pool, v_pool, req_to_token, workspace,
                replan)


def run_batch(args: argparse.Namespace, config: dict, bs: int) -> dict:
    from flashinfer import BatchDecodeWithPagedKVCacheWrapper
    from sglang.srt.layers.attention.flashinfer_backend import should_use_tensor_core

    st = prepare(args, config, bs)
    dec, buffers, tables, idle_keys = st.dec, st.buffers, st.tables, st.idle_keys
    layers, m, n = st.layers, st.model, st.context
    sparse_step, encode = st.sparse_step, st.encode
    dev = "cuda"
    e = dec.encode_group
    result = {"batch": bs, "layers": layers, "kept_tokens_per_kv_head": int(buffers.counts[0]), "encode_group": e}
    # each stage over the whole step (the encode is one launch for all layers)
    stages = {"encode_due": time_graph(lambda: encode(tables.due), 1, args.iters),
              "encode_idle": time_graph(lambda: encode(idle_keys), 1, args.iters)}
    stages.update({name: time_graph(fn, layers, args.iters) for name, fn in st.stages.items()})
    # the due keys and rotation tables are computed once per step, shared by every layer
    stages["step_tables"] = time_graph(st.step_tables, 1, args.iters)
    result["a2ats_stages_ms"] = {k: round(v, 4) for k, v in stages.items()}

    due = time_graph(lambda: sparse_step(tables.due), 1, args.iters) + stages["step_tables"]
    idle = time_graph(lambda: sparse_step(idle_keys), 1, args.iters) + stages["step_tables"]
    result["a2ats_step_ms"] = {"due": round(due, 4), "idle": round(idle, 4)}
    result["a2ats_ms"] = round(((e - 1) * idle + due) / e, 4)  # a request completes an encode group once every e steps
    if args.profile:
        result["a2ats_kernels_us"] = {"due": kernel_times(lambda: sparse_step(tables.due), 1),
                                      "idle": kernel_times(lambda: sparse_step(idle_keys), 1)}

    # stock: SGLang's FlashInfer decode (GQA heads, page size 1, each request's whole context)
    indptr = torch.arange(0, bs + 1, device=dev, dtype=torch.int32) * n
    indices = st.req_to_token[1:, :n].reshape(-1).contiguous()
    stock = BatchDecodeWithPagedKVCacheWrapper(
        st.workspace, "NHD", use_tensor_cores=should_use_tensor_core(torch.bfloat16, m.num_attention_heads, m.num_kv_heads),
        use_cuda_graph=True,
        paged_kv_indptr_buffer=indptr, paged_kv_indices_buffer=indices,
        paged_kv_last_page_len_buffer=torch.ones(bs, dtype=torch.int32, device=dev),
    )
    stock.plan(indptr, indices, torch.ones(bs, dtype=torch.int32, device=dev), m.num_attention_heads,
               m.num_kv_heads, m.head_dim, 1, data_type=torch.bfloat16, q_data_type=torch.bfloat16)
    result["stock_ms"] = round(time_graph(lambda: stock.forward(st.q, (st.k_pool, st.v_pool), sm_scale=m.head_dim**-0.5),
                                          layers, args.iters), 4)
    result["speedup"] = round(result["stock_ms"] / result["a2ats_ms"], 3)
    shape = StepShape(bs, n, m.num_kv_heads, m.group_size, m.head_dim, args.codebook_size, int(dec.reps.shape[0]),
                      result["kept_tokens_per_kv_head"], e)
    result.update(roofline(shape, layers, result, device_name("cuda")))
    return result


def roofline(shape: StepShape, layers: int, result: dict, device: str) -> dict:
    """Each stage's bytes (all layers) and the bandwidth its time reaches; the step's bytes and
    its time at the GPU's peak bandwidth, for A²ATS and for stock. ``score`` and ``topk`` are
    timed apart, without the first-pass counting; ``score_topk`` is the serving pair."""
    apart = stage_bytes(dataclasses.replace(shape, first_pass_in_score=False))
    fused = stage_bytes(dataclasses.replace(shape, first_pass_in_score=True))
    per_stage = {k: v * layers for k, v in apart.items()}
    per_stage["score_topk"] = (fused["score"] + fused["topk"]) * layers
    times = result["a2ats_stages_ms"]
    step, stock, least = (f(shape) * layers for f in (step_bytes, stock_bytes, minimum_bytes))
    peak = PEAK_BANDWIDTH.get(device)
    out = {
        "a2ats_stages_bytes": per_stage,
        "a2ats_stages_gbps": {k: gbps(v, times[k]) for k, v in per_stage.items() if v and k in times},
        "a2ats_step_bytes": step, "a2ats_step_gbps": gbps(step, result["a2ats_ms"]),
        "method_minimum_bytes": least,
        "stock_bytes": stock, "stock_gbps": gbps(stock, result["stock_ms"]),
        "peak_gbps": peak / 1e9 if peak else None,
    }
    if peak:
        out["a2ats_roofline_ms"] = round(step / peak * 1e3, 4)
        out["a2ats_vs_roofline"] = round(result["a2ats_ms"] / out["a2ats_roofline_ms"], 2)
        out["stock_roofline_ms"] = round(stock / peak * 1e3, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    rows = []
    for bs in args.batch:
        row = run_batch(args, config, bs)
        torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    workload = {k: getattr(args, k) for k in ("context", "graph_context", "batch", "ratio", "budget_max", "wrope", "codebook_size",
                                               "slots")}
    write_results(args.out, "cuda", Path(args.config).name, workload, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
