"""Layering rules: method never imports sglang, kernels never import the runtime, the package
never imports benchmarks, and the backend and the decoder never ask where the K/V live."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> dict[str, set[str]]:
    out = {}
    for f in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[str(f.relative_to(ROOT))] = names
    return out


def offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{f}: {name}"
        for f, names in imported_modules(folder).items()
        for name in names
        if any(name == p or name.startswith(p + ".") for p in forbidden)
    ]


def test_method_never_imports_sglang() -> None:
    assert offenders(ROOT / "a2ats_sglang" / "method", ("sglang", "a2ats_sglang.runtime", "benchmarks")) == []


def test_kernels_never_import_the_runtime() -> None:
    assert offenders(ROOT / "kernels", ("a2ats_sglang.runtime", "benchmarks")) == []


def test_package_never_imports_benchmarks() -> None:
    assert offenders(ROOT / "a2ats_sglang", ("benchmarks",)) == []


def test_importing_the_method_loads_no_sglang() -> None:
    code = (
        "import sys, a2ats_sglang.method.rope, a2ats_sglang.method.vq, a2ats_sglang.method.codebook, "
        "a2ats_sglang.method.calibration, a2ats_sglang.method.scores, a2ats_sglang.method.selection; "
        "print(sorted(m for m in sys.modules if m == 'sglang' or m.startswith('sglang.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_kernels_and_patches_ship_inside_the_package() -> None:
    import a2ats_sglang.kernels
    import a2ats_sglang.patches

    assert Path(a2ats_sglang.kernels.__file__).parent == ROOT / "kernels"
    assert Path(a2ats_sglang.patches.__file__).parent == ROOT / "patches"


def mode_names(path: Path) -> set[str]:
    """Identifiers and attributes of a module that name offload mode or its parts."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return {n for n in names if "offload" in n.lower() or n in ("TieredStore", "OffloadKVPool", "host_kv", "staging", "hot")}


def test_the_backend_and_the_decoder_never_ask_which_store_runs() -> None:
    """Where the K/V live is one seam (runtime/kv_store.py): the backend and the decoder call
    the store's hooks, and only ``open_store`` tells the modes apart."""
    for module in ("backend.py", "sparse_decode.py"):
        assert mode_names(ROOT / "a2ats_sglang/runtime" / module) == set(), module
