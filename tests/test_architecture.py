"""The layers point one way: kernels/ (the ops) imports nothing from bss2_backend, which builds on
it; read from the source, so a stray import fails here before it becomes a cycle."""
import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def _imports(path):
    """(module, level) of every import statement in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


def test_kernels_import_nothing_from_bss2_backend():
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) >= 10, "kernels/ moved?"
    offenders = []
    for path in files:
        # a relative import may climb to kernels/ itself, never above it
        depth = len(path.relative_to(KERNELS).parts) - 1
        for module, level in _imports(path):
            if level == 0 and module.split(".")[0] in ("bss2_backend", "integrations", "bench"):
                offenders.append(f"{path.relative_to(KERNELS)}: import {module}")
            if level > depth + 1:
                offenders.append(f"{path.relative_to(KERNELS)}: from {'.' * level}{module}")
    assert not offenders, offenders


def test_every_op_folder_has_its_three_forms():
    for op in ("chip_lif", "snn_neuron"):
        names = {p.name for p in (KERNELS / op).glob("*.py")}
        assert {"__init__.py", "naive.py", "reference.py", "triton.py"} <= names, (op, names)
