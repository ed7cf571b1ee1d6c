"""What does calibrating a full-size model cost? Capture + k-means at a real model shape.

No 8B weights are available offline, so the model is randomly initialised from the real
config (e.g. the Llama-3.1-8B shape on the GPU node). The capture path and the k-means are the
real ones and their cost does not depend on the weights' values; the codebook itself is
meaningless and is not kept.

    python -m benchmarks.calibration_cost --config-dir /tmp/models/llama-3.1-8b-shape
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from a2ats_sglang.calibrate import CalibrationConfig, collect, fit
from a2ats_sglang.capture import IMPLEMENTATION, register
from a2ats_sglang.corpus import pydoc_documents
from benchmarks.meta import run_meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibration_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--config-dir", required=True, help="directory with config.json and a tokenizer")
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--uuid-tokens", type=int, default=16384)
    p.add_argument("--codebook-size", type=int, default=4096)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results/calibration_cost.json")
    args = p.parse_args(argv)

    from transformers import AutoConfig, AutoModelForCausalLM

    register()
    config = AutoConfig.from_pretrained(args.config_dir)
    started = time.time()
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=IMPLEMENTATION).eval()
    init_s = time.time() - started
    cfg = CalibrationConfig(
        model_path=args.config_dir, tokens=args.tokens, uuid_tokens=args.uuid_tokens,
        codebook_size=args.codebook_size, iters=args.iters, device=args.device,
    )
    torch.cuda.synchronize()
    t0 = time.time()
    data, summary = collect(cfg, model=model, documents=pydoc_documents("all"))
    torch.cuda.synchronize()
    t1 = time.time()
    book = fit(cfg, data, summary)
    torch.cuda.synchronize()
    t2 = time.time()
    result = {
        "meta": run_meta(args.device, f"{config.architectures[0]} shape from {args.config_dir} (random weights)", {
            "calibration_tokens": summary["text_tokens"] + summary["uuid_tokens"],
            "codebook_size": args.codebook_size, "max_iters": args.iters,
            "pairs": config.num_hidden_layers * config.num_key_value_heads,
        }),
        "seconds": {"model_init": round(init_s, 1), "capture": round(t1 - t0, 1), "kmeans": round(t2 - t1, 1), "total": round(t2 - t0, 1)},
        "keys_per_head": data.num_tokens,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "codebook_bytes": book.centroids_z.numel() * 4 + book.chol.numel() * 8,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds"]), result["peak_gpu_memory_gib"], "GiB peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
