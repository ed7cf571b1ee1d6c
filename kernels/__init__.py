"""GPU kernels of a2ats-sglang (Triton/CUDA), importable as ``a2ats_sglang.kernels``.

Kernels implement the hot paths whose references live in ``a2ats_sglang.method``: key
encoding, lookup-table scoring, top-K and host→hot-buffer fetch. They never import the runtime.

- :mod:`.encode` — ``encode_projection`` (once per layer at load), ``encode_keys`` (new keys →
  int16 codes in the code pool), ``encode_workspace``;
- :mod:`.score` — ``score_tokens`` (per-(request, kv head) token scores from the codes and
  the bucketed, group-reduced lookup table);
- :mod:`.select` — ``topk_rows`` (radix-select top-K per row), ``write_selected`` (picks →
  KV-pool indices), ``select_and_write`` (both fused), ``topk_workspace``;
- :mod:`.lut` — ``folded_lookup_table`` (WRoPE queries rotated in registers, times the codebook,
  reduced over each GQA group; a fixed tiling: batch-invariant, as SGLang's deterministic
  inference wants);
- :mod:`.rotary` — ``rope_pairs`` (the RoPE pairing the encode and lookup-table kernels rotate with);
- :mod:`.hot_buffer` — ``fetch_hot`` (offload mode: picked tokens' K/V from pinned host memory
  into each request's hot buffer, attention indices of the row), ``store_to_host`` / ``load_from_host``
  (K/V rows between the GPU and the pinned host pool).

Wrappers never synchronise with the host nor allocate: they write into caller buffers, so
they run inside CUDA-graph capture.
"""
