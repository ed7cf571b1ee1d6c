"""The score kernel compiles for the H200 (sm_90) on any machine, without register spills:
Triton's own ptxas builds it ahead of time, so a kernel that only the GPU node could have
rejected fails here first. (A subprocess: the suite's kernels are defined for the interpreter.)"""

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
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from a2ats_sglang.kernels.score import _score_kernel

sig = {"lut_ptr": "*fp32", "codes_ptr": "*i16", "req_to_token_ptr": "*i32", "req_pool_ptr": "*i64",
       "seq_lens_ptr": "*i64", "edges_ptr": "*i32", "out_ptr": "*fp32", "ws_ptr": "*i32"}
sig.update({n: "i32" for n in ("num_kv_heads", "num_buckets", "L", "C", "sinks", "window", "runs", "stride_lb",
                               "stride_lk", "stride_lg", "stride_lc", "stride_cs", "stride_ch", "stride_rr", "stride_or")})
consts = json.loads(sys.argv[1])
sig.update({n: "constexpr" for n in consts})
k = triton.compile(ASTSource(fn=_score_kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})
open(sys.argv[2], "w").write(k.asm["ptx"])
print(k.metadata.shared)
"""


def ptxas() -> Path:
    return Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"


@pytest.mark.skipif(not ptxas().exists(), reason="this Triton wheel ships no ptxas")
@pytest.mark.parametrize("table", [4096, 0])  # the far table on chip, and the plain gather
def test_score_kernel_builds_for_sm90_without_spills(table: int, tmp_path: Path) -> None:
    consts = {"BLOCK": 512, "PAD": False, "SPLITS": 4, "FIRST_PASS": True, "TABLE": table}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    ptx = tmp_path / "score.ptx"
    built = subprocess.run([sys.executable, "-c", BUILD, json.dumps(consts), str(ptx)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    shared = int(built.stdout.split()[-1])
    assert shared >= 4 * table  # the far table lives in shared memory
    info = subprocess.run([str(ptxas()), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                          capture_output=True, text=True, check=True).stderr
    assert "0 bytes spill stores, 0 bytes spill loads" in info, info
    assert int(re.search(r"Used (\d+) registers", info).group(1)) <= 128, info  # ≥ 4 programs of 4 warps per SM
