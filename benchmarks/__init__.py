"""Benchmarks of a2ats-sglang; run them as modules from the repository root
(``python -m benchmarks.fidelity``). Results go to ``benchmarks/results/`` with a ``meta``."""
