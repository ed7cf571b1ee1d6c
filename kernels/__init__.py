"""GPU kernels of a2ats-sglang (Triton/CUDA), importable as ``a2ats_sglang.kernels``.

Kernels implement the hot paths whose references live in ``a2ats_sglang.method``: key
encoding, lookup-table scoring, top-K and host→hot-buffer fetch. They never import the runtime.
"""
