"""Offload mode's KV store, one subpackage: every token's K/V in pinned host memory, its codes on
the GPU (:class:`~a2ats_sglang.runtime.tiered.store.TieredStore`, behind
:mod:`a2ats_sglang.runtime.kv_store`).

- :mod:`.plan`: the start-up split of the GPU budget, kept for the process;
- :mod:`.host_pool`: the pinned host rows;
- :mod:`.pool`: SGLang's KV pool over them (GPU slots for staging and the fetched picks);
- :mod:`.allocator`: SGLang's slot allocator over GPU homes and host rows, GPU homes first;
- :mod:`.staging`: prefill staging, the positions → GPU-slot table;
- :mod:`.hot_buffers`, :mod:`.shared_cache`: where a decode step's picks are made resident;
- :mod:`.store`: what an extend and a decode step do;
- :mod:`.radix`: SGLang's radix cache over logical slots;
- :mod:`.metrics`: hit rate, bytes fetched, slots in use.
"""
