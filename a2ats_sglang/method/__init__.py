"""A²ATS in pure torch (CPU or GPU), the reference the serving kernels are tested against.

Never imports sglang. Modules: ``rope`` (RoPE spec, un-rotation, WRoPE query), ``vq``
(whitening, k-means, encoding), ``calibration`` (captured tensors → codebook), ``codebook``
(file format and validation), ``scores`` (exact / code / Quest scores), ``selection``
(selectors and reference sparse attention).
"""
