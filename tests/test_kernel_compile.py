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
sig = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in fn.arg_names}
k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps})
open(out, "w").write(k.asm["ptx"])
print(k.metadata.shared)
"""

SCORE_PTRS = {"lut_ptr": "*fp32", "codes_ptr": "*i16", "req_to_token_ptr": "*i32", "req_pool_ptr": "*i64",
              "seq_lens_ptr": "*i64", "edges_ptr": "*i32", "out_ptr": "*fp32", "ws_ptr": "*i32"}
TOPK_PTRS = {"scores_ptr": "*fp32", "counts_ptr": "*i32", "ws_ptr": "*i32", "lens_ptr": "*i64", "out_idx_ptr": "*i32",
             "indptr_ptr": "*i32", "req_to_token_ptr": "*i32", "req_pool_ptr": "*i64", "out_indices_ptr": "*i32"}
LUT_PTRS = {"a_ptr": "*bf16", "q_ptr": "*bf16", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "out_ptr": "*fp32"}
LUT = {"REDUCE_MAX": True, "NEOX": True, "BF16_DOT": True, "BLOCK_C": 64, "G_P2": 4, "BLOCK_D": 128}
TOPK = {"SPLITS": 4, "BLOCK": 2048, "HAS_LENS": True}

# (kernel, pointer types, constexprs, warps, least shared bytes, most registers a thread)
CASES = {
    "score": ("score", "_score_kernel", SCORE_PTRS, {"BLOCK": 512, "PAD": False, "SPLITS": 4, "FIRST_PASS": True, "HEADS": 1},
              4, 0, 128),
    "score, 8 kv heads a program": ("score", "_score_kernel", SCORE_PTRS,
                                    {"BLOCK": 512, "PAD": False, "SPLITS": 4, "FIRST_PASS": True, "HEADS": 8}, 4, 0,
                                    144),  # 142: the heads' loads issued together, 3 programs an SM
    "top-K pass 1, histogram": ("select", "_split_hist_kernel", TOPK_PTRS, {"P": 1, **TOPK}, 4, 0, 64),
    "top-K pass 2, atomics": ("select", "_split_hist_kernel", TOPK_PTRS, {"P": 2, **TOPK}, 4, 0, 64),
    "top-K compaction": ("select", "_split_compact_kernel", TOPK_PTRS, {"WRITE_INDICES": True, **TOPK}, 4, 0, 128),
    "lookup table, 64 columns": ("lut", "_folded_lut_kernel", LUT_PTRS, {"BLOCK_J": 16, **LUT}, 8, 0, 168),
    "lookup table, 32 columns": ("lut", "_folded_lut_kernel", LUT_PTRS, {"BLOCK_J": 8, **LUT}, 8, 0, 128),
}


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
