"""The decode kernels compile for the H200 (sm_90) on any machine, without register spills:
Triton's own ptxas builds them ahead of time, so a kernel that only the GPU node could have
rejected fails here first, and the registers a thread needs (which decide how many programs
share an SM) are pinned. (A subprocess: the suite's kernels are defined for the interpreter.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton

BUILD = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

module, name, pointers, consts, warps, out = json.loads(sys.argv[1])
fn = getattr(importlib.import_module(module), name)
consts = {n: getattr(triton.language, {"fp32": "float32"}[v]) if n.endswith("_DTYPE") else v for n, v in consts.items()}
stages = consts.pop("num_stages", 3)
sig = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in fn.arg_names}
k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps, "num_stages": stages})
open(out, "w").write(k.asm["ptx"])
print(k.metadata.shared)
"""

SCORE_PTRS = {"lut_ptr": "*fp32", "codes_ptr": "*i16", "req_to_token_ptr": "*i32", "req_pool_ptr": "*i64",
              "seq_lens_ptr": "*i64", "edges_ptr": "*i32", "out_ptr": "*fp32", "ws_ptr": "*i32"}
TOPK_PTRS = {"scores_ptr": "*fp32", "counts_ptr": "*i32", "ws_ptr": "*i32", "lens_ptr": "*i64", "out_idx_ptr": "*i32",
             "indptr_ptr": "*i32", "req_to_token_ptr": "*i32", "req_pool_ptr": "*i64", "out_indices_ptr": "*i32"}
LUT_PTRS = {"a_ptr": "*bf16", "q_ptr": "*bf16", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "out_ptr": "*fp32"}
LUT = {"REDUCE_MAX": True, "NEOX": True, "BF16_DOT": True, "BLOCK_C": 64, "G_P2": 4, "BLOCK_D": 128}
TOPK = {"SPLITS": 4, "BLOCK": 2048, "HAS_LENS": True, "STAGES": 1}
SCORE = {"BLOCK": 512, "PAD": False, "SPLITS": 4, "FIRST_PASS": True}

# (kernel, pointer types, constexprs, warps, least shared bytes, most registers a thread)
CACHE_PTRS = {"picks_ptr": "*i32", "counts_ptr": "*i32", "req_to_token_ptr": "*i32", "req_pool_ptr": "*i64",
              "indptr_ptr": "*i32", "out_ptr": "*i32", "cached_ptr": "*i32", "owner_ptr": "*i32", "used_ptr": "*i32",
              "hand_ptr": "*i64", "epoch_ptr": "*i32", "scratch_ptr": "*i32", "stats_ptr": "*i32", "counters_ptr": "*i64",
              "host_k_ptr": "*bf16", "host_v_ptr": "*bf16", "dev_k_ptr": "*bf16", "dev_v_ptr": "*bf16"}
COPY_PTRS = {f"{side}_{kv}_ptr": "*bf16" for side in ("src", "dst", "home") for kv in ("k", "v")} | {
    "src_idx_ptr": "*i64", "dst_idx_ptr": "*i64"}
CASES = {
    "score": ("score", "_score_kernel", SCORE_PTRS, {**SCORE, "HEADS": 1}, 4, 0, 128),
    "score, 8 kv heads a program": ("score", "_score_kernel", SCORE_PTRS, {**SCORE, "HEADS": 8}, 4, 0,
                                    144),  # 142: the heads' loads issued together, 3 programs an SM
    "top-K pass 1, histogram": ("select", "_split_hist_kernel", TOPK_PTRS, {"P": 1, **TOPK}, 4, 0, 64),
    "top-K pass 2, atomics": ("select", "_split_hist_kernel", TOPK_PTRS, {**TOPK, "P": 2, "BLOCK": 1024}, 4, 0, 64),
    "top-K pass 3, atomics": ("select", "_split_hist_kernel", TOPK_PTRS, {"P": 3, **TOPK}, 4, 0, 64),
    # one split a row (over 512 rows): SINGLE_CONFIG's 8 warps, pass 2 at its 1,024-column block
    "top-K pass 2, atomics, one split": ("select", "_split_hist_kernel", TOPK_PTRS,
                                         {**TOPK, "P": 2, "SPLITS": 1, "BLOCK": 1024}, 8, 0, 64),
    "top-K compaction": ("select", "_split_compact_kernel", TOPK_PTRS, {"WRITE_INDICES": True, **TOPK}, 4, 0, 128),
    # batch 1 at 32K: every pass and the compaction in one launch, 8 splits meeting at barriers
    "top-K fused": ("select", "_split_fused_kernel", TOPK_PTRS,
                    {**TOPK, "SPLITS": 8, "FIRST": 1, "WRITE_INDICES": True, "RANGES_BLOCK": 1024}, 4, 0, 160),
    # the pipelined loops of 256 rows and more (SELECT_STAGES)
    "top-K pass 1, 2 stages": ("select", "_split_hist_kernel", TOPK_PTRS, {**TOPK, "P": 1, "STAGES": 2}, 4, 0, 128),
    "top-K compaction, 2 stages": ("select", "_split_compact_kernel", TOPK_PTRS,
                                   {**TOPK, "WRITE_INDICES": True, "STAGES": 2}, 4, 0, 168),
    "shared cache lookup": ("shared_cache", "_lookup_kernel", CACHE_PTRS, {"BLOCK": 128, "COUNT": True, "HOMES": False},
                            4, 0, 64),
    "shared cache lookup, GPU homes": ("shared_cache", "_lookup_kernel", CACHE_PTRS,
                                       {"BLOCK": 128, "COUNT": True, "HOMES": True}, 4, 0, 64),
    "shared cache claim and copy": ("shared_cache", "_claim_kernel", CACHE_PTRS,
                                    {"BLOCK": 128, "BLOCK_D": 128, "BLOCK_COPY": 16, "COUNT": True}, 8, 0, 64),
    "shared cache invalidation": ("shared_cache", "_invalidate_kernel", {"cached_ptr": "*i32", "loc_ptr": "*i64"},
                                  {"BLOCK": 256, "HEADS_P2": 8}, 4, 0, 64),
    # KV rows to and from their homes (GPU rows up to `homes`, host rows above): writes (2), prefix loads (1)
    **{f"row copy, homes on side {side}": ("hot_buffer", "_copy_rows_kernel", COPY_PTRS,
                                          {"GATHER": True, "BLOCK_N": 16, "BLOCK_E": 1024, "HOMES": side,
                                           "SKIP_IN_PLACE": side == 2}, 8, 0, 248)
       for side in (0, 1, 2)},
    "lookup table, 64 columns": ("lut", "_folded_lut_kernel", LUT_PTRS, {"BLOCK_J": 16, **LUT}, 8, 0, 168),
    "lookup table, 32 columns": ("lut", "_folded_lut_kernel", LUT_PTRS, {"BLOCK_J": 8, **LUT}, 8, 0, 128),
    "lookup table, 128 codewords a tile": ("lut", "_folded_lut_kernel", LUT_PTRS, {**LUT, "BLOCK_J": 16, "BLOCK_C": 128},
                                           8, 0, 232),
}


ENCODE_PTRS = {"k_ptr": "*bf16", "kh_ptr": "*bf16", "proj_ptr": "*fp32", "half_norm_ptr": "*fp32", "loc_ptr": "*i64", "codes_ptr": "*i16",
               "ws_ptr": "*i16", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "scale": "fp32"}
ENCODE = {"BLOCK_D": 128, "PRECISION": "tf32x3", "SPLIT": False, "ROTATE": True, "NEOX": True, "GATHER": False,
          "LAYERED": False, "K_DTYPE": "fp32", "HOMES": False}
SHARED_LIMIT = 232448  # bytes of shared memory a program may take on sm_90 (227 KiB)


def ptxas() -> Path:
    return Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"


@pytest.mark.skipif(not ptxas().exists(), reason="this Triton wheel ships no ptxas")
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_builds_for_sm90_without_spills(case: str, tmp_path: Path) -> None:
    module, name, pointers, consts, warps, least_shared, most_registers = CASES[case]
    ptx = tmp_path / "kernel.ptx"
    job = json.dumps([f"a2ats_sglang.kernels.{module}", name, pointers, consts, warps, str(ptx)])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    built = subprocess.run([sys.executable, "-c", BUILD, job], env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert int(built.stdout.split()[-1]) >= least_shared  # the score kernel's far table lives in shared memory
    info = subprocess.run([str(ptxas()), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                          capture_output=True, text=True, check=True).stderr
    assert "0 bytes spill stores, 0 bytes spill loads" in info, info
    assert int(re.search(r"Used (\d+) registers", info).group(1)) <= most_registers, info


def build(tmp_path: Path, module: str, name: str, pointers: dict, consts: dict, warps: int) -> tuple[int, str]:
    """Shared bytes and ptxas's report of one kernel built for sm_90."""
    ptx = tmp_path / "kernel.ptx"
    job = json.dumps([f"a2ats_sglang.kernels.{module}", name, pointers, consts, warps, str(ptx)])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    built = subprocess.run([sys.executable, "-c", BUILD, job], env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    info = subprocess.run([str(ptxas()), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                          capture_output=True, text=True, check=True).stderr
    return int(built.stdout.split()[-1]), info


def encode_tilings() -> list[tuple[int, int, int, int]]:
    from benchmarks.kernel_tuning import ENCODE_KNOBS

    (_, _, values, _), = ENCODE_KNOBS
    return list(values)


@pytest.mark.skipif(not ptxas().exists(), reason="this Triton wheel ships no ptxas")
@pytest.mark.parametrize("tiling", encode_tilings())
def test_every_swept_encode_tiling_fits_the_h200(tiling: tuple[int, int, int, int], tmp_path: Path) -> None:
    """A tiling that takes more shared memory than a program may have would fail to launch on
    the GPU node, in the middle of a tuning run."""
    block_n, block_c, warps, stages = tiling
    consts = {**ENCODE, "BLOCK_N": block_n, "BLOCK_C": block_c, "num_stages": stages}
    shared, _ = build(tmp_path, "encode", "_encode_kernel", ENCODE_PTRS, consts, warps)
    assert shared <= SHARED_LIMIT, (tiling, shared)


@pytest.mark.skipif(not ptxas().exists(), reason="this Triton wheel ships no ptxas")
@pytest.mark.parametrize("homes", [False, True])
def test_encode_of_a_decode_step_spills_nothing_at_eight_warps(homes: bool, tmp_path: Path) -> None:
    """The due keys' encode (64-key tiles, the codebook split, every layer in one launch) at 8
    warps keeps its tiles in registers; at 4 it spills (the sweep times both). So with GPU homes,
    each key read from the GPU pool or the host pool."""
    consts = {**ENCODE, "BLOCK_N": 64, "BLOCK_C": 64, "SPLIT": True, "GATHER": True, "LAYERED": True, "num_stages": 2,
              "HOMES": homes}
    ptrs = {**ENCODE_PTRS, "k_ptr": "*i64", "kh_ptr": "*i64", "ws_ptr": "*i64"}
    spills = {}
    for warps in (4, 8):
        _, info = build(tmp_path, "encode", "_encode_kernel", ptrs, consts, warps)
        spills[warps] = re.search(r"(\d+) bytes spill stores", info).group(1)
    assert spills[8] == "0" and spills[4] != "0", spills
