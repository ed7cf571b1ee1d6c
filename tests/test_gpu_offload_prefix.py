"""Prefix reuse in offload mode, end to end on a GPU (SmolLM2, deterministic inference, the
radix cache on):

- a request whose prompt starts with a cached document reuses it (SGLang reports the cached
  tokens) and answers exactly as it does with nothing cached;
- concurrent requests over one document all finish with those same answers;
- more distinct documents than the host pool holds evict cached ones; SGLang's idle check (every
  logical slot free, cached or in use) stays quiet and the server keeps serving;
- the README's SGLang frontend program, which forks over one document through
  ``RuntimeEndpoint``: every branch reads the document from the cache and answers as the same
  question asked alone with nothing cached.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.gpu

PORT = 30092
DOC = 3000
SERVER = ("offload-prefix", PORT, ["--a2ats-offload", "--a2ats-host-kv-gb", "1", "--enable-deterministic-inference",
                            "--mem-fraction-static", "0.2", "--cuda-graph-max-bs", "16"])


def ids(n: int, seed: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 40000 + 100 for i in range(n)]


def generate(server, prompt: list[int]) -> dict:
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}}
    r = requests.post(f"{server.url}/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def flush(server) -> None:
    assert requests.post(f"{server.url}/flush_cache", timeout=60).status_code == 200


def cold(server, prompt: list[int]) -> list[int]:
    flush(server)
    out = generate(server, prompt)
    assert out["meta_info"]["cached_tokens"] == 0
    return out["output_ids"]


def test_answers_with_a_prefix_hit_equal_answers_without(server) -> None:
    doc = ids(DOC, 1)
    # short continuations too: 8 new tokens are 24 query rows, where FlashInfer's prefill would
    # pick a smaller query tile than a cold prefill's (runtime/unified_extend.py)
    questions = [ids(40, 2), ids(40, 3), ids(8, 4), ids(1, 7)]
    want = [cold(server, doc + q) for q in questions]
    flush(server)
    generate(server, doc + ids(40, 5))  # caches the document
    for q, w in zip(questions, want):
        out = generate(server, doc + q)
        assert out["meta_info"]["cached_tokens"] >= DOC, out["meta_info"]
        assert out["output_ids"] == w


def test_concurrent_requests_sharing_a_document(server) -> None:
    doc = ids(DOC, 6)
    questions = [ids(30, 100 + s) for s in range(8)]
    want = [cold(server, doc + q) for q in questions]
    flush(server)
    generate(server, doc + ids(30, 99))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: generate(server, doc + q), questions))
    assert [g["output_ids"] for g in got] == want
    assert all(g["meta_info"]["cached_tokens"] >= DOC for g in got)


def test_eviction_under_pressure_keeps_the_tree_consistent(server) -> None:
    cap = int(requests.get(f"{server.url}/server_info", timeout=30).json()["max_total_num_tokens"])
    docs = [ids(DOC, 1000 + s) for s in range(cap // DOC + 8)]  # more than the host pool holds
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda d: generate(server, d), docs))
    assert all(len(o["output_ids"]) == 16 for o in outs)
    first = generate(server, docs[0])  # long evicted: prefilled again, same answer
    assert first["output_ids"] == outs[0]["output_ids"]
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200


QUESTIONS = ["What does the text say about exceptions?", "Which statements are described?",
             "What is said about names?", "Summarise the first paragraph."]


def document() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))[:12000]  # ~3K tokens of Python's reference


def test_forked_questions_reuse_the_document(server) -> None:
    import sglang as sgl

    @sgl.function
    def ask(s, doc: str, questions: list[str]):
        s += "Read this text.\n\n" + doc + "\n\n"
        s.sync()  # fork() caches the text only if it is already applied (SGLang checks before syncing)
        forks = s.fork(len(questions))
        for f, q in zip(forks, questions):
            f += "Question: " + q + "\nAnswer:" + sgl.gen("answer", max_tokens=24, temperature=0)
        forks.join()

    sgl.set_default_backend(sgl.RuntimeEndpoint(server.url))
    log_start = server.log.stat().st_size
    state = ask.run(doc=document(), questions=QUESTIONS)
    forked = state["answer"]  # join() gathers each branch's answer, in order
    cached = sum(int(m[1]) for m in re.finditer(r"#cached-token: (\d+)", server.log.read_text(errors="replace")[log_start:]))
    assert cached >= 3 * 2500, f"the branches read the document from the cache ({cached} cached tokens)"

    # each question alone, with nothing cached
    head = "Read this text.\n\n" + document() + "\n\n"
    alone = []
    for q in QUESTIONS:
        flush(server)
        body = {"text": head + "Question: " + q + "\nAnswer:", "sampling_params": {"max_new_tokens": 24, "temperature": 0}}
        out = requests.post(f"{server.url}/generate", json=body, timeout=300).json()
        assert out["meta_info"]["cached_tokens"] == 0
        alone.append(out["text"])
    assert forked == alone
