"""Bad requests against a running server: each must get a clear client error, and the server
must stay alive.

    python -m benchmarks.bad_inputs --base-url http://127.0.0.1:30000

The cases: an empty prompt, bytes that are not UTF-8, token ids outside the vocabulary, a
negative or huge ``max_tokens``, invalid sampling parameters, malformed JSON, a 10 MB body and a
prompt longer than the context, on SGLang's native ``/generate`` and the OpenAI API. A clear
error is a 4xx status with a message; anything else (accepted, a 5xx, no answer) is reported,
and after each case ``/health`` must answer. Exits 1 if any case is not a clear error or the
server stopped answering. The reliability soak (issue "Reliability") runs the same cases.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

MB = 2**20


@dataclass(frozen=True)
class BadInput:
    name: str
    path: str
    body: bytes  # sent as is


@dataclass(frozen=True)
class Outcome:
    name: str
    status: int | None  # None: no answer
    message: str  # the error the server gave, or why there was none
    verdict: str  # clear_error | accepted | server_error | no_answer
    alive: bool  # /health answered 200 afterwards


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _generate(**fields: Any) -> bytes:
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    sampling = fields.pop("sampling_params", {})
    body.update(fields)
    body["sampling_params"] = {**body["sampling_params"], **sampling}
    return _json(body)


def _chat(model: str, **fields: Any) -> bytes:
    return _json({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **fields})


def cases(vocab_size: int, context_len: int, model: str) -> list[BadInput]:
    """Every bad input, for a server with this vocabulary, context length and model name."""
    gen, chat = "/generate", "/v1/chat/completions"
    return [
        BadInput("empty prompt (text)", gen, _generate(text="")),
        BadInput("empty prompt (input_ids)", gen, _json({"input_ids": [], "sampling_params": {"max_new_tokens": 4}})),
        BadInput("empty messages (OpenAI)", chat, _chat(model, messages=[])),
        BadInput("bytes that are not UTF-8", gen, b'{"text": "caf\xe9 \xff\xfe", "sampling_params": {"max_new_tokens": 4}}'),
        BadInput("token id past the vocabulary", gen, _json({"input_ids": [1, 2, vocab_size + 7],
                                                              "sampling_params": {"max_new_tokens": 4}})),
        BadInput("negative token id", gen, _json({"input_ids": [1, -5, 3], "sampling_params": {"max_new_tokens": 4}})),
        BadInput("negative max_new_tokens", gen, _generate(sampling_params={"max_new_tokens": -1})),
        BadInput("huge max_new_tokens", gen, _generate(sampling_params={"max_new_tokens": 10**9})),
        BadInput("negative max_tokens (OpenAI)", chat, _chat(model, max_tokens=-1)),
        BadInput("huge max_tokens (OpenAI)", chat, _chat(model, max_tokens=10**9)),
        BadInput("negative temperature", gen, _generate(sampling_params={"temperature": -1.0})),
        BadInput("top_p of 0", gen, _generate(sampling_params={"top_p": 0.0})),
        BadInput("top_p above 1 (OpenAI)", chat, _chat(model, top_p=1.5)),
        BadInput("top_k of 0", gen, _generate(sampling_params={"top_k": 0})),
        BadInput("frequency_penalty of 5 (OpenAI)", chat, _chat(model, frequency_penalty=5.0)),
        BadInput("malformed JSON", gen, b'{"text": "Hello", "sampling_params": {'),
        BadInput("malformed JSON (OpenAI)", chat, b'{"model": "x", "messages": [}'),
        BadInput("a JSON array, not an object", gen, b"[1, 2, 3]"),
        BadInput("10 MB body", gen, _generate(text="lorem ipsum " * (10 * MB // 12))),
        BadInput("prompt longer than the context", gen, _json({"input_ids": [100] * (context_len + 16),
                                                                "sampling_params": {"max_new_tokens": 4}})),
    ]


def error_message(response: requests.Response) -> str:
    """The error a server gave: its JSON `error`/`message`/`detail`, or the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        err = body.get("error", body.get("message", body.get("detail")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err:
            return str(err)[:300]
    return json.dumps(body)[:300]


def alive(base_url: str, timeout: float = 30) -> bool:
    try:
        return requests.get(f"{base_url}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def run_case(base_url: str, case: BadInput, timeout: float = 120) -> Outcome:
    try:
        r = requests.post(f"{base_url}{case.path}", data=case.body, headers={"Content-Type": "application/json"},
                          timeout=timeout)
    except requests.RequestException as e:
        return Outcome(case.name, None, f"{type(e).__name__}: {e}"[:300], "no_answer", alive(base_url))
    message = error_message(r)
    if 400 <= r.status_code < 500:
        verdict = "clear_error" if message else "accepted"  # a bare 4xx says nothing
    elif r.status_code < 300:
        # SGLang streams an error as a 200 body only when streaming; these requests do not stream
        verdict = "accepted"
    else:
        verdict = "server_error"
    return Outcome(case.name, r.status_code, message, verdict, alive(base_url))


def server_shape(base_url: str) -> tuple[int, int, str]:
    """Vocabulary size, context length and model path of a server on this machine: its model's
    ``config.json`` (SGLang's info endpoints carry neither number), the context flag if set."""
    model = requests.get(f"{base_url}/model_info", timeout=30).json()["model_path"]
    server = requests.get(f"{base_url}/server_info", timeout=30).json()
    config = json.loads((Path(model) / "config.json").read_text())
    config = config.get("text_config", config)
    context = server.get("context_length") or config["max_position_embeddings"]
    return int(config["vocab_size"]), int(context), model


def run_all(base_url: str) -> list[Outcome]:
    vocab, context, model = server_shape(base_url)
    return [run_case(base_url, case) for case in cases(vocab, context, model)]


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.verdict != "clear_error" or not o.alive]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bad_inputs", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="a running server, e.g. http://127.0.0.1:30000")
    p.add_argument("--out", help="also write the outcomes to this JSON file")
    args = p.parse_args(argv)
    outcomes = run_all(args.base_url.rstrip("/"))
    for o in outcomes:
        print(f"{o.verdict:12} {o.status!s:4} {'alive' if o.alive else 'DEAD '}  {o.name}: {o.message[:120]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump([o.__dict__ for o in outcomes], f, indent=1)
    bad = failures(outcomes)
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} bad inputs got a clear error with the server alive")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
