"""An SGLang frontend program that forks over one long document, against an offload-mode
a2ats server (SmolLM2, deterministic inference): every branch reuses the document from the radix
cache, and its answer equals the answer to the same question asked alone with nothing cached.
The program is the README's example."""

from __future__ import annotations

import re

import pytest
import requests

pytestmark = pytest.mark.gpu

PORT = 30093
QUESTIONS = ["What does the text say about exceptions?", "Which statements are described?",
             "What is said about names?", "Summarise the first paragraph."]
SERVER = ("frontend-fork", PORT, ["--a2ats-offload", "--a2ats-host-kv-gb", "1", "--enable-deterministic-inference",
                            "--mem-fraction-static", "0.2", "--cuda-graph-max-bs", "16"])


def document() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))[:12000]  # ~3K tokens of Python's reference


def test_forked_questions_reuse_the_document(server) -> None:
    import sglang as sgl

    @sgl.function
    def ask(s, doc: str, questions: list[str]):
        s += "Read this text.\n\n" + doc + "\n\n"
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

    alone = []
    for q in QUESTIONS:
        assert requests.post(f"{server.url}/flush_cache", timeout=60).status_code == 200
        body = {"text": "Read this text.\n\n" + document() + "\n\nQuestion: " + q + "\nAnswer:",
                "sampling_params": {"max_new_tokens": 24, "temperature": 0}}
        alone.append(requests.post(f"{server.url}/generate", json=body, timeout=300).json()["text"])
    assert forked == alone
