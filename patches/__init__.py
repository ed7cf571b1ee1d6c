"""Every hook into SGLang internals, one module per SGLang target, importable as
``a2ats_sglang.patches``. Each module's docstring names its target (SGLang 0.5.17) and a test
asserts the target's signature, so an SGLang upgrade fails loudly instead of silently."""
