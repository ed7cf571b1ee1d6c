"""The SGLang-facing side of a2ats-sglang: flags and config transport, plugin install, the
``a2ats`` attention backend and its code pool. Imports sglang; ``a2ats_sglang.method`` does not."""
