"""The serving decode path (encode → LUT → score → top-K → FlashInfer over picked tokens)
against the method references, on the GPU, with SGLang's memory layout but no server."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.codebook import Codebook, ModelIdentity
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.scores import exact_logits
from a2ats_sglang.method.selection import masked_attention, select_per_kv_head
from a2ats_sglang.method.vq import encode
from a2ats_sglang.method.wrope import wrope_code_logits

pytestmark = pytest.mark.gpu
CONFIGS = Path(__file__).parent / "configs"


class Setup:
    """A small KV pool holding ``lengths`` tokens per request at shuffled slots, layer 0 only."""

    def __init__(self, config_name: str, lengths: list[int], ratio: float, wrope: str, size: int = 512) -> None:
        from a2ats_sglang.runtime.backend import build_decoder
        from a2ats_sglang.runtime.config import A2ATSConfig

        config = json.loads((CONFIGS / config_name).read_text())
        self.book = Codebook.random(ModelIdentity.from_hf_config(config), size)
        m = self.book.meta.model
        self.rope = RopeSpec.from_dict(m.rope)
        dev = "cuda"
        g = torch.Generator(device="cpu").manual_seed(1)
        self.lengths = torch.tensor(lengths)
        total = int(self.lengths.sum())
        slots = total + 64
        self.context = max(lengths) + 64
        cfg = A2ATSConfig(codebook="unused", budget_ratio=ratio, budget_min=8, budget_max=None, wrope=wrope)
        self.decoder = build_decoder(cfg, self.book, slots, self.context, dev)
        self.req_to_token = torch.zeros(len(lengths) + 1, self.context, dtype=torch.int32)
        perm = torch.randperm(slots - 1, generator=g)[:total] + 1  # slot 0 is SGLang's padding slot
        self.k_pre, self.v = [], []
        self.k_pool = torch.zeros(slots, m.num_kv_heads, m.head_dim, dtype=torch.bfloat16, device=dev)
        self.v_pool = torch.zeros_like(self.k_pool)
        start = 0
        # key scales vary by channel like real keys so codes carry information
        scale = torch.linspace(3, 0.3, m.head_dim)
        for r, n in enumerate(lengths):
            loc = perm[start : start + n]
            start += n
            self.req_to_token[r + 1, :n] = loc.int()
            k_pre = (torch.randn(n, m.num_kv_heads, m.head_dim, generator=g) * scale).bfloat16()
            v = torch.randn(n, m.num_kv_heads, m.head_dim, generator=g).bfloat16()
            k_post = self.rope.apply(k_pre.float(), torch.arange(n)).bfloat16()
            self.k_pool[loc.to(dev)] = k_post.to(dev)
            self.v_pool[loc.to(dev)] = v.to(dev)
            tables = self.decoder.rotary.key_tables(torch.arange(n, device=dev))
            self.decoder.encode(0, k_post.to(dev), loc.to(dev), tables)
            self.k_pre.append(k_pre)
            self.v.append(v)
        self.req_to_token = self.req_to_token.to(dev)
        self.q = torch.randn(len(lengths), m.num_attention_heads, m.head_dim, generator=g).bfloat16()

    def decode(self, graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from a2ats_sglang.runtime.sparse_decode import SparseDecodeBuffers

        d, bs = self.decoder, len(self.lengths)
        buffers = SparseDecodeBuffers(bs, d.num_kv_heads, self.context, d.width, d.codebook_size, d.num_buckets, "cuda",
                                      layers=d.num_layers)
        pointers = torch.full((d.num_layers,), self.k_pool.data_ptr(), dtype=torch.int64, device="cuda")
        workspace = torch.empty(128 * 2**20, dtype=torch.uint8, device="cuda")
        wrapper = d.new_wrapper(workspace, buffers if graph else None, bs)
        seq_lens = self.lengths.cuda()
        positions = seq_lens - 1
        rpi = torch.arange(1, bs + 1, device="cuda")
        q = self.q.cuda()
        d.plan(wrapper, buffers, self.lengths, torch.bfloat16, torch.bfloat16)
        d.plan(wrapper, buffers, self.lengths, torch.bfloat16, torch.bfloat16)  # the fast plan

        def step() -> torch.Tensor:
            buffers.set_counts(seq_lens, d.budget)
            tables = d.step_tables(positions, self.req_to_token, rpi)
            d.select(0, q, tables.queries, self.req_to_token, rpi, seq_lens, buffers)
            out = d.attend(wrapper, q, self.k_pool, self.v_pool, self.book.meta.model.head_dim**-0.5)
            # as the backend after its last layer: every layer's due groups (re-encoded: same codes)
            d.encode_pool_layers(pointers, self.k_pool, tables.due, buffers.encode_ws)
            return out

        if graph:
            step()
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = step()
            buffers.indices.zero_()
            g.replay()
        else:
            out = step()
        torch.cuda.synchronize()
        return out.float().cpu(), buffers

    def picked(self, buffers) -> list[torch.Tensor]:
        """Per request, the ``[Hkv, S]`` mask of tokens the kernels picked."""
        hkv = self.decoder.num_kv_heads
        indptr, indices = buffers.indptr.cpu(), buffers.indices.cpu()
        masks = []
        for r, n in enumerate(self.lengths.tolist()):
            slot_to_t = {int(s): t for t, s in enumerate(self.req_to_token[r + 1, :n].cpu())}
            mask = torch.zeros(hkv, n, dtype=torch.bool)
            for g in range(hkv):
                row = r * hkv + g
                for idx in indices[indptr[row] : indptr[row + 1]].tolist():
                    assert idx % hkv == g
                    mask[g, slot_to_t[idx // hkv]] = True
            masks.append(mask)
        return masks

    def reference(self, r: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The method library's selection and sparse attention for request ``r``."""
        d, n = self.decoder, int(self.lengths[r])
        decoded = self.book.decoded[0]
        codes = encode(self.k_pre[r].float().transpose(0, 1), self.book.chol[0], self.book.centroids_z[0]).t()
        pos = torch.tensor([n - 1])
        scores = wrope_code_logits(self.q[r : r + 1].float(), pos, codes, decoded, self.rope, d.buckets, 1.0)
        k = d.budget.counts(torch.tensor([n])) - d.budget.sinks - d.budget.window
        if mask is None:
            mask = select_per_kv_head(
                scores, torch.tensor([n]), k.clamp_min(0), d.num_kv_heads, d.budget.sinks, d.budget.window,
            )[0]
        k_post = self.rope.apply(self.k_pre[r].float(), torch.arange(n))
        logits = exact_logits(self.q[r : r + 1].float(), k_post, self.book.meta.model.head_dim**-0.5)
        out = masked_attention(logits, self.v[r].float(), mask[None])[0]
        return mask, out


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("config_name,wrope", [("smollm2-135m.json", "bucketed"), ("llama-3.1-8b.json", "single")])
def test_sparse_decode_matches_reference(config_name: str, wrope: str, graph: bool) -> None:
    s = Setup(config_name, [40, 704, 2500], ratio=0.05, wrope=wrope)  # 704: a due group
    out, buffers = s.decode(graph)
    for r, mask in enumerate(s.picked(buffers)):
        ref_mask, _ = s.reference(r)
        n = int(s.lengths[r])
        assert int(mask.sum(-1).max()) == int(s.decoder.budget.counts(torch.tensor([n]))), "row sizes = budget"
        agree = (mask == ref_mask).float().mean()
        assert agree > 0.995, f"request {r}: picks agree on {agree:.4f} of tokens"  # bf16 LUT ties
        _, ref_out = s.reference(r, mask)  # attention over exactly the picked tokens
        torch.testing.assert_close(out[r], ref_out, atol=2e-2, rtol=2e-2)


def test_full_budget_is_dense_attention() -> None:
    s = Setup("smollm2-135m.json", [1, 65, 900], ratio=1.0, wrope="bucketed")
    out, buffers = s.decode(graph=True)
    for r, mask in enumerate(s.picked(buffers)):
        assert bool(mask.all()), "a budget of the whole context keeps every token"
        _, ref_out = s.reference(r, torch.ones_like(mask))
        torch.testing.assert_close(out[r], ref_out, atol=2e-2, rtol=2e-2)


def test_lookup_table_under_deterministic_inference() -> None:
    """SGLang's ``--enable-deterministic-inference`` swaps ``torch.bmm`` for a batch-invariant
    kernel without fp32 output; the lookup table must not depend on it."""
    from sglang.srt.batch_invariant_ops import batch_invariant_ops as bio

    s = Setup("smollm2-135m.json", [300, 40], ratio=0.05, wrope="bucketed")
    d = s.decoder
    tables = d.rotary.query_tables(s.lengths.cuda() - 1, d.reps)
    want = d.lookup_table(0, s.q.cuda(), tables)
    bio.enable_batch_invariant_mode()
    try:
        got = d.lookup_table(0, s.q.cuda(), tables)
    finally:
        bio.disable_batch_invariant_mode()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_codes_do_not_depend_on_how_many_keys_are_encoded_together() -> None:
    """Deterministic mode fixes the encode kernel's tiling: the codes of a few keys encoded alone
    (a short continuation of a cached prefix) equal their codes inside a long prefill."""
    from a2ats_sglang.runtime.backend import build_decoder
    from a2ats_sglang.runtime.config import A2ATSConfig

    config = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
    book = Codebook.random(ModelIdentity.from_hf_config(config), 4096)
    m = book.meta.model
    g = torch.Generator(device="cpu").manual_seed(3)
    n = 5000
    k_post = (torch.randn(n, m.num_kv_heads, m.head_dim, generator=g) * torch.linspace(3, 0.3, m.head_dim)).bfloat16().cuda()
    cfg = A2ATSConfig(codebook="unused", budget_ratio=0.05, budget_min=8, budget_max=None, wrope="bucketed")
    decoder = build_decoder(cfg, book, 2 * n, n + 64, "cuda", batch_invariant=True)
    positions = torch.arange(n, device="cuda")
    decoder.encode(0, k_post, positions, decoder.rotary.key_tables(positions))  # one long prefill
    together = decoder.codes[0, :n].clone()
    lo, sizes = 0, itertools.cycle([1, 19, 40, 7, 300])
    while lo < n:  # the same keys again, a few at a time, into other slots
        hi = min(n, lo + next(sizes))
        decoder.encode(0, k_post[lo:hi], n + positions[lo:hi], decoder.rotary.key_tables(positions[lo:hi]))
        lo = hi
    assert torch.equal(decoder.codes[0, n:], together)
