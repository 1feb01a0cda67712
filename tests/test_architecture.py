"""The package's layers: a module imports only from its own layer or the layers below it.

See docs/architecture.md. Lazy imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pvsquant"
LAYERS = {  # lower number = lower layer
    "core": 0,        # types, errors, labels, io, grids, models: shared ground
    "reporting": 1,   # figures and HTML from saved outputs
    "pipeline": 2,    # what runs per subject
    "cohort": 3,      # statistics and evaluation over subjects
    "learning": 4,    # synthetic data, training, fine-tuning
    "entry": 5,       # demo, cli, __main__
}
CORE = {"__init__", "_version", "types", "errors", "labels", "io", "grids", "models"}
ENTRY = {"demo", "cli", "__main__"}


def layer_of(module: str) -> str:
    """Layer of a dotted module name inside pvsquant ('pvsquant.pipeline.roi' -> 'pipeline')."""
    parts = module.split(".")[1:]
    if not parts:
        return "core"
    if parts[0] in LAYERS:
        return parts[0]
    if parts[0] in ENTRY:
        return "entry"
    if parts[0] in CORE:
        return "core"
    raise AssertionError(f"{module} is in no layer: add it to tests/test_architecture.py and docs/architecture.md")


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of the pvsquant modules that one source file imports."""
    own = ["pvsquant", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = own[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            found.update(n for n in names if n.startswith("pvsquant"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pvsquant"))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path):
    own = "pvsquant." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own_layer = layer_of(own)
    upward = [m for m in imported_modules(path)
              if m != "pvsquant.__version__" and LAYERS[layer_of(m)] > LAYERS[own_layer]]
    assert not upward, f"{own} ({own_layer}) imports from a higher layer: {upward}"


def test_checker_catches_upward_imports():
    """The checker itself: lazy and relative imports from a higher layer are found."""
    source = "def f():\n    from .pipeline.roi import count_mask\n    from ..learning import training\n"
    assert imported_modules(PACKAGE / "grids.py", source) == {"pvsquant.pipeline.roi"}
    assert "pvsquant.learning" in imported_modules(PACKAGE / "cohort" / "stats.py", source)
    assert layer_of("pvsquant.pipeline.roi") == "pipeline" and layer_of("pvsquant.cli") == "entry"
