"""A prompt holding a token id outside the vocabulary is refused before the scheduler sees it
(``patches/token_ids.py``): SGLang 0.5.17 lets it through, and the embedding's out-of-bounds
read then kills the server (the H200 soak at 2dead40)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from a2ats_sglang.patches.token_ids import out_of_vocabulary

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("ids", "bad"), [([], None), ([0, 5, 99], None), ([1, 2, 107], 107), ([1, -5, 3], -5),
                                          ([100, 3], 100), ([-1, 200], -1)])
def test_the_first_id_outside_the_vocabulary_is_found(ids: list[int], bad: int | None) -> None:
    assert out_of_vocabulary(ids, 100) == bad


# A fresh process, so the hook is installed through SGLang's HookRegistry on the real class
# without leaking into other tests; a TokenizerManager built without __init__ carries only the
# fields _validate_one_request reads.
PROBE = """
import types
from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs
from a2ats_sglang.patches import token_ids

token_ids.install()
m = object.__new__(TokenizerManager)
m.context_len, m.num_reserved_tokens, m.allow_auto_truncate, m.validate_total_tokens = 64, 0, False, True
m.is_generation, m.model_config = True, types.SimpleNamespace(vocab_size=100)
m.server_args = ServerArgs(model_path="dummy")
for ids in ([1, 2, 3], [1, 2, 107], [1, -5, 3], [1] * 70):
    req = GenerateReqInput(input_ids=ids, sampling_params={"max_new_tokens": 4})
    try:
        m._validate_one_request(req, ids)
        print("OK")
    except ValueError as e:
        print("REFUSED", e)
"""


def test_the_hook_refuses_such_prompts_and_keeps_sglangs_own_checks() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("OK", "REFUSED"))]
    assert lines[0] == "OK"
    assert lines[1] == "REFUSED input_ids holds token id 107, outside the vocabulary [0, 100)."
    assert lines[2] == "REFUSED input_ids holds token id -5, outside the vocabulary [0, 100)."
    assert lines[3].startswith("REFUSED The input (70 tokens) is longer than the model's context length")
