"""a2ats-sglang: A²ATS sparse decode attention for SGLang 0.5.17.

- ``a2ats_sglang.method`` — the method in pure torch (RoPE/WRoPE, query-aware VQ, codebook
  files, selectors, reference sparse attention); never imports sglang.
- ``python -m a2ats_sglang.calibrate`` — build a codebook for a model.
"""

__version__ = "0.1.0"
