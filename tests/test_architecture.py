"""The package's import graph runs one way, imports stay where a reader sees them, and functions stay short.

    errors, _version, _callable ─► config, api, card, ... ─► registry, perf ─► loggers, inner, data, models
        ─► algorithms, runs ─► evaluate ─► train, adapt ─► export ─► library (the Python API) ─► cli, the package root

Every import counts, at the top of a module or inside a function: a module may import only from its own
layer's package or from lower layers, so the graph has no cycle (a lazy import of a higher layer would
hide one); and outside ``metactl/cli/`` (whose commands import their work lazily so that
``metactl --help`` never loads torch) a function-level import is allowed only with its reason. The
package root sits at the top: it imports the Python API lazily, and no module of metactl imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "metactl"

ROOT_PACKAGE = "metactl"  # a layer entry that is the package root names the root alone, not every module under it
MAX_FUNCTION_LINES = 80  # from the ``def`` line to the body's last line (decorators not counted), nested functions included

LAYERS: list[tuple[str, ...]] = [
    ("metactl.errors", "metactl._version", "metactl._callable", "metactl.contract", "metactl.calibration", "metactl.adapt_spec"),
    ("metactl.files", "metactl.graph_build"),
    ("metactl.config", "metactl.adapt_probe", "metactl.api", "metactl.distributed", "metactl.launch", "metactl.backbones", "metactl.hidden"),
    ("metactl.registry", "metactl.perf", "metactl.adapt_graph"),
    ("metactl.loggers", "metactl.inner", "metactl.data", "metactl.models", "metactl.heads"),
    ("metactl.modalities",),
    ("metactl.algorithms", "metactl.runs", "metactl.runtime", "metactl.runtime_adapt", "metactl.card"),
    ("metactl.evaluate", "metactl.plot", "metactl.results"),
    ("metactl.train", "metactl.adapt"),
    ("metactl.export",),
    ("metactl.adaptable",),
    ("metactl.library",),
    ("metactl.testing", "metactl.cli", ROOT_PACKAGE),
    ("metactl.__main__",),
]

# (module, imported module) -> why the import sits in a function
LAZY = {
    ("metactl.plot", "matplotlib"): "the optional [plot] extra: missing is a clear error",
    ("metactl.plot", "matplotlib.pyplot"): "after choosing the headless backend",
    ("metactl.registry", "metactl.api"): "api imports torch; `metactl algorithms` lists plugins without it",
    ("metactl", "metactl.library"): "the Python API imports torch; `import metactl` and `metactl --help` must not",
    ("metactl.loggers", "tensorboard"): "the optional [tensorboard] extra: missing is a one-line install hint",
    ("metactl.loggers", "torch.utils.tensorboard"): "needs the tensorboard package, checked just before",
    ("metactl.loggers", "mlflow"): "the optional [mlflow] extra: missing is a one-line install hint",
    ("metactl.loggers", "mlflow.tracking"): "the optional [mlflow] extra, checked just before",
    ("metactl.loggers", "mlflow.entities"): "the optional [mlflow] extra, checked when the logger was made",
    ("metactl.library", "metactl.launch"): "torch.distributed's elastic launcher, loaded only for --nproc",
    ("metactl.train", "metactl.data.text"): "the [text] extra (tokenizers): only --val-all-classes on text data needs it",
    ("metactl.data", "metactl.data.text"): "the [text] extra (tokenizers): only evaluate --all-classes --label-names needs it",
    ("metactl.data.label_names", "metactl.data.tokens"): "the [text] extra (tokenizers): only --label-names on a text run needs it",
    ("metactl.backbones", "huggingface_hub"): "only a --backbone given as a Hugging Face hub id needs it (the [text] extra)",
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """First-party modules an import statement loads (``from pkg import submodule`` counts as the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.module is None:
        return []
    subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
    return subs if len(subs) == len(node.names) else [node.module, *subs]


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(module-level imports, function-level imports with line numbers) of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    top: set[str] = set()
    lazy: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child):
                    (lazy.append((child.lineno, target)) if in_function else top.add(target))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return top, lazy


def _layer(module: str) -> tuple[int, str]:
    """(layer index, the layer entry it falls under) — the longest matching prefix."""
    best = (-1, "")
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            under = module.startswith(entry + ".") and entry != ROOT_PACKAGE
            if (module == entry or under) and len(entry) > len(best[1]):
                best = (i, entry)
    assert best[0] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def _graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, at module level or inside a function."""
    out = {}
    for m in MODULES:
        top, lazy = _imports(m)
        out[m] = {t for t in top | {t for _, t in lazy} if t in MODULES and t != m}
    return out


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_run_one_way() -> None:
    wrong = []
    for m, targets in _graph().items():
        lm, em = _layer(m)
        for t in targets:
            lt, et = _layer(t)
            if lt > lm or (lt == lm and et != em):
                wrong.append(f"{m} (layer {lm}) imports {t} (layer {lt})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_function_level_imports_only_where_they_keep_start_up_light() -> None:
    found = []
    for m in MODULES:
        if m.startswith("metactl.cli"):
            continue
        for line, target in _imports(m)[1]:
            if (m, target) not in LAZY:
                found.append(f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {target} inside a function")
    assert not found, "move these imports to the top of their module, or add them to LAZY with the reason:\n" + "\n".join(found)


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The cycle search on a graph with one, closed by a function-level import (so a broken search, or one
    that skips lazy imports, cannot pass the real test silently)."""
    global MODULES
    real = MODULES
    try:
        pkg = tmp_path / "metactl"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "a.py").write_text("from metactl import b\n")
        (pkg / "b.py").write_text("def f():\n    import metactl.a\n")  # a function-level import closes it
        MODULES = {"metactl": pkg / "__init__.py", "metactl.a": pkg / "a.py", "metactl.b": pkg / "b.py"}
        with pytest.raises(pytest.fail.Exception, match=r"import cycle: metactl\.a -> metactl\.b -> metactl\.a"):
            test_no_import_cycle()
    finally:
        MODULES = real


def _long_functions(path: Path) -> list[str]:
    """``path:line name (N lines)`` for each function longer than :data:`MAX_FUNCTION_LINES`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]


def test_no_function_over_80_lines() -> None:
    long = [f for path in sorted(MODULES.values()) for f in _long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


def test_the_length_check_counts_from_def_to_the_last_line(tmp_path: Path) -> None:
    """81 lines from ``def`` to the end is one too many (a decorator above does not count); 80 pass."""
    global ROOT
    pkg = tmp_path / "metactl"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    method = body.replace("    x", "        x")
    (pkg / "long.py").write_text(f"@staticmethod\ndef ok():\n{body}\n\nclass C:\n    async def long(self):\n{method}        return 1\n")
    real = ROOT
    try:
        ROOT = pkg
        assert _long_functions(pkg / "long.py") == ["metactl/long.py:85 long (81 lines)"]
    finally:
        ROOT = real
