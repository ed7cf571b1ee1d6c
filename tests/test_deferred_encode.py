"""Deferred key encoding: decode steps encode whole aligned groups of keys read back from the KV
pool, so every token outside the local window must have its code, also after a later request
reuses a prefix whose last group an earlier request never completed (the radix cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.codebook import Codebook, ModelIdentity
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers, SparseDecoder, encode_group

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = Path(__file__).parent / "configs"


@pytest.mark.parametrize("window, group", [(0, 1), (1, 1), (3, 2), (8, 8), (16, 16), (64, 16), (100, 16)])
def test_encode_group_fits_the_window(window: int, group: int) -> None:
    assert encode_group(window) == group


class Pool:
    """SmolLM2's shape, a tiny codebook, one layer; a request's tokens at shuffled slots."""

    def __init__(self, window: int, slots: int = 400, context: int = 256) -> None:
        config = json.loads((CONFIGS / "smollm2-135m.json").read_text())
        config["num_hidden_layers"] = 1
        self.book = Codebook.random(ModelIdentity.from_hf_config(config), 64)
        m = self.book.meta.model
        self.rope = RopeSpec.from_dict(m.rope)
        self.dec = SparseDecoder(self.book, slots, context, Budget(2, window, 0.1, 0, None),
                                 DistanceBuckets.single(window, window + 1), "max", DEVICE)
        self.k_pool = torch.zeros(slots, m.num_kv_heads, m.head_dim, dtype=torch.bfloat16, device=DEVICE)
        self.req_to_token = torch.zeros(3, context, dtype=torch.int32, device=DEVICE)
        self.free = torch.randperm(slots - 1, generator=torch.Generator().manual_seed(0)) + 1
        self.g = torch.Generator().manual_seed(1)
        self.buffers = SparseDecodeBuffers(2, m.num_kv_heads, context, 8, 64, self.dec.num_buckets, DEVICE)

    def write(self, req: int, positions: range) -> torch.Tensor:
        """New post-RoPE keys at ``positions`` of request row ``req``. → their slots"""
        m = self.book.meta.model
        loc, self.free = self.free[: len(positions)].to(DEVICE), self.free[len(positions):]
        self.req_to_token[req, positions.start : positions.stop] = loc.int()
        k_pre = torch.randn(len(positions), m.num_kv_heads, m.head_dim, generator=self.g) * torch.linspace(3, 0.3, m.head_dim)
        self.k_pool[loc] = self.rope.apply(k_pre, torch.arange(positions.start, positions.stop)).bfloat16().to(DEVICE)
        return loc

    def reference_codes(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Codes of the stored keys encoded directly (the extend path)."""
        codes = self.dec.codes[0].clone()
        self.dec.encode(0, self.k_pool[slots], slots, self.dec.rotary.key_tables(positions.to(DEVICE)))
        out, self.dec.codes[0] = self.dec.codes[0][slots].clone(), codes
        return out

    def check(self, req: int, seq_len: int) -> int:
        """Every token of ``req`` outside the window has its code. → how many were checked"""
        n = seq_len - self.dec.budget.window
        if n <= 0:
            return 0
        slots = self.req_to_token[req, :n].long()
        assert torch.equal(self.dec.codes[0][slots], self.reference_codes(slots, torch.arange(n))), seq_len
        return n

    def decode(self, req: int, start: int, steps: int, workspace: bool, layered: bool = False) -> None:
        """``steps`` decode steps of request row ``req`` from position ``start``, checking after each.
        ``layered``: as the backend does, through the one launch for every layer's pool."""
        rpi = torch.tensor([req], device=DEVICE)
        ws = self.buffers.encode_ws if workspace else None
        pointers = torch.tensor([self.k_pool.data_ptr()], dtype=torch.int64, device=DEVICE)
        for pos in range(start, start + steps):
            self.write(req, range(pos, pos + 1))
            due = self.dec.due_keys(self.req_to_token, rpi, torch.tensor([pos], device=DEVICE))
            if layered:
                self.dec.encode_pool_layers(pointers, self.k_pool, due, ws)
            else:
                self.dec.encode_pool(0, self.k_pool, due, ws)
            self.check(req, pos + 1)


@pytest.mark.parametrize("window, workspace, layered", [(8, True, False), (8, False, False), (5, True, False),
                                                        (1, True, False), (8, True, True), (8, False, True)])
def test_every_token_outside_the_window_has_its_code(window: int, workspace: bool, layered: bool) -> None:
    p = Pool(window)
    assert p.dec.encode_group == encode_group(window)
    # request 1: prefill 37 tokens (the extend path encodes them), decode 21 steps
    loc = p.write(1, range(37))
    p.dec.encode(0, p.k_pool[loc], loc, p.dec.rotary.key_tables(torch.arange(37, device=DEVICE)))
    p.decode(1, 37, 21, workspace, layered)
    assert p.check(1, 58) > 0
    # request 2 reuses request 1's 58 tokens (its last group unfinished: 58 % group ≠ 0 for
    # groups > 2), as SGLang's radix cache shares them: the extend encodes the tail it may lack
    p.req_to_token[2, :58] = p.req_to_token[1, :58]
    e = p.dec.encode_group
    stale = p.req_to_token[1, 58 - 58 % e : 58].long()  # the group request 1 never completed
    p.dec.codes[0][stale] = 0  # what the slots' earlier owners left there
    tails = p.dec.prefix_tails(p.req_to_token, torch.tensor([2], device=DEVICE), torch.tensor([58], device=DEVICE))
    if p.dec.encode_group > 1:
        p.dec.encode_pool(0, p.k_pool, tails)
    loc = p.write(2, range(58, 70))
    p.dec.encode(0, p.k_pool[loc], loc, p.dec.rotary.key_tables(torch.arange(58, 70, device=DEVICE)))
    p.decode(2, 70, 9, workspace, layered)
    assert p.check(2, 79) == 79 - window


def test_due_keys_and_prefix_tails() -> None:
    p = Pool(window=16)
    assert p.dec.encode_group == 16
    p.req_to_token[1, :40] = torch.arange(100, 140, dtype=torch.int32)
    p.req_to_token[2, :40] = torch.arange(200, 240, dtype=torch.int32)
    rpi = torch.tensor([1, 2, 0], device=DEVICE)  # row 0: a CUDA-graph padding request
    due = p.dec.due_keys(p.req_to_token, rpi, torch.tensor([31, 20, 0], device=DEVICE))
    assert due.slots.tolist() == list(range(116, 132)) + [-1] * 32
    tails = p.dec.prefix_tails(p.req_to_token, rpi, torch.tensor([35, 32, 0], device=DEVICE))
    assert tails.slots.tolist() == [132, 133, 134] + [-1] * 13 + [-1] * 32
    full = p.req_to_token.shape[1]  # a prefix filling the whole table: nothing past it is read
    assert p.dec.prefix_tails(p.req_to_token, rpi[:1], torch.tensor([full], device=DEVICE)).slots.tolist() == [-1] * 16
