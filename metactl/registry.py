"""Entry-point discovery for the ``metactl.algorithms`` group.

Listing never imports an algorithm: names and distributions come from package metadata, and the
one-line description is read from the module's source with ``ast`` (its ``description`` class
attribute, else the first docstring line). Only the algorithm chosen with ``--algo`` is imported,
then checked against the contract.

``METACTL_ALGORITHMS=maml,fomaml`` (comma-separated names) restricts which entry points are seen.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from importlib.machinery import PathFinder
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from metactl import contract
from metactl.errors import MetactlError

GROUP = "metactl.algorithms"
ENV = "METACTL_ALGORITHMS"


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    value: str  # "module:attr"
    distribution: str
    version: str
    description: str
    problem: str | None = None  # why it cannot be loaded, if found out without importing


def _entry_points() -> list[EntryPoint]:
    eps = list(entry_points(group=GROUP))
    allowed = os.environ.get(ENV)
    if allowed:
        names = {n.strip() for n in allowed.split(",") if n.strip()}
        eps = [ep for ep in eps if ep.name in names]
    seen: dict[str, EntryPoint] = {}
    for ep in eps:
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda e: e.name)


def _find_spec(module: str) -> Any:
    """The module's spec, found without importing it or its parent packages (``importlib.util.find_spec``
    of a dotted name imports the parents, running a plugin package's ``__init__``)."""

    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])  # a top-level name: asks the finders, imports nothing
    for i in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec


def _describe(ep: EntryPoint) -> tuple[str, str | None]:
    """(description, problem) from the module's source, without executing it."""
    module, _, attr = ep.value.partition(":")
    try:
        spec = _find_spec(module)
    except (ImportError, ValueError) as exc:
        return "", f"cannot find module {module!r} ({exc})"
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return "", None if spec is not None else f"module {module!r} not found"
    try:
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return "", f"cannot parse {spec.origin} ({exc})"
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attr.split(".")[0]:
            for stmt in node.body:
                target = stmt.target if isinstance(stmt, ast.AnnAssign) else (stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
                if isinstance(target, ast.Name) and target.id == "description" and isinstance(stmt.value, ast.Constant):
                    return str(stmt.value.value), None
            doc = ast.get_docstring(node)
            return (doc.strip().splitlines()[0] if doc else ""), None
    doc = ast.get_docstring(tree)
    return (doc.strip().splitlines()[0] if doc else ""), None


def list_algorithms() -> list[AlgorithmInfo]:
    infos = []
    for ep in _entry_points():
        dist = ep.dist
        description, problem = _describe(ep)
        infos.append(
            AlgorithmInfo(
                name=ep.name,
                value=ep.value,
                distribution=dist.name if dist is not None else "?",
                version=dist.version if dist is not None else "?",
                description=description,
                problem=problem,
            )
        )
    return infos


def available_names() -> list[str]:
    return [ep.name for ep in _entry_points()]


def load_algorithm(name: str) -> Any:
    """Import the algorithm class registered as ``name`` and check it against the contract."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        names = ", ".join(available_names()) or "(none)"
        raise MetactlError(f"Unknown algorithm {name!r}.", f"Installed algorithms: {names}.")
    ep = matches[0]
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not crash with a traceback
        raise MetactlError(
            f"Algorithm {name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}.",
            "Reinstall or fix that plugin, or choose another --algo.",
        ) from None
    problems = check_contract(cls)
    if problems:
        raise MetactlError(f"Algorithm {name!r} ({ep.value}) breaks the plugin contract: " + "; ".join(problems) + ".", "Fix the plugin.")
    return cls


def check_contract(cls: Any) -> list[str]:
    """What the class lacks of :class:`metactl.api.Algorithm` (empty when nothing): each member by name."""
    from metactl.api import CLASS_ATTRIBUTES, HOOKS, AlgorithmBase  # lazy: api imports torch; `metactl algorithms` lists without it

    problems = [f"missing class attribute {attr!r}" for attr in contract.missing(cls, contract.Algorithm, CLASS_ATTRIBUTES)]
    if not contract.missing(cls, contract.Algorithm, ("Config",)) and not dataclasses.is_dataclass(cls.Config):
        problems.append("Config must be a dataclass")
    for method in HOOKS:
        impl = getattr(cls, method, None)
        if not callable(impl) or (method in ("meta_gradient", "adapt") and impl is getattr(AlgorithmBase, method)):
            problems.append(f"missing method {method}()")
    return problems


def check_instance(algo: Any) -> list[str]:
    """What a constructed algorithm lacks: its ``config`` and a valid ``inner_lr_shape``."""
    from metactl.api import INNER_LR_SHAPES  # lazy: api imports torch; `metactl algorithms` lists without it

    problems = [f"missing instance attribute {attr!r} (set it in __init__)" for attr in contract.missing(algo, contract.Algorithm, ("config",))]
    shape = getattr(algo, "inner_lr_shape", None)
    if shape not in INNER_LR_SHAPES:
        problems.append(f"inner_lr_shape must be one of {', '.join(INNER_LR_SHAPES)} (got {shape!r})")
    return problems


class EntryPointGroup:
    """The entry points of one group (``metactl.models``, ``metactl.data``), looked up once per process.

    ``unknown`` and ``installed`` word the error for a name nobody registered; ``what`` names the part in
    the other errors; ``missing`` is the hint when the part needs a package that is not installed.
    ``refresh()`` looks again (after a plugin was put on the path)."""

    def __init__(self, group: str, what: str, unknown: str, installed: str, missing: str = "Install the text extra: pip install 'metactl[text]'.") -> None:
        self.group, self.what, self.unknown, self.installed, self.missing = group, what, unknown, installed, missing
        self._found: dict[str, EntryPoint] | None = None

    def entry_points(self) -> dict[str, EntryPoint]:
        if self._found is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self.group):
                found.setdefault(ep.name, ep)
            self._found = found
        return self._found

    def refresh(self) -> None:
        self._found = None

    def load(self, name: str) -> Any:
        """The object registered as ``name``; a MetactlError when it is unknown or does not import."""
        eps = self.entry_points()
        if name not in eps:
            raise MetactlError(self.unknown.format(name=name), f"{self.installed}: {', '.join(sorted(eps)) or '(none)'}.")
        try:
            return eps[name].load()
        except ModuleNotFoundError as exc:  # an optional extra (e.g. [text]) not installed
            raise MetactlError(f"{self.what} {name!r} needs the {exc.name} package, which is not installed.", self.missing) from None
        except Exception as exc:  # a broken plugin must not crash with a traceback
            raise MetactlError(
                f"{self.what} {name!r} ({eps[name].value}) failed to import: {type(exc).__name__}: {exc}.", "Reinstall or fix that plugin."
            ) from None


def build_algorithm(name: str, options: dict[str, Any], train: Any) -> Any:
    """The algorithm ``name`` with its Config from ``options``, for the TrainConfig ``train``; checked
    against the contract once constructed (``config``, a valid ``inner_lr_shape``)."""
    cls = load_algorithm(name)
    algo = cls(make_config(cls, options), train)
    problems = check_instance(algo)
    if problems:
        raise MetactlError(f"Algorithm {name!r} breaks the plugin contract: " + "; ".join(problems) + ".", "Fix the plugin.")
    return algo


def make_config(cls: Any, options: dict[str, Any]) -> Any:
    """Build the algorithm's Config from ``algo_options``; unknown keys are reported at once."""
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MetactlError(
            f"Unknown option(s) for algorithm {cls.name!r}: {', '.join(unknown)}.",
            f"Known: {', '.join(sorted(known)) or '(none)'}.",
        )
    try:
        return cls.Config(**options)
    except (TypeError, ValueError) as exc:
        raise MetactlError(f"Invalid options for algorithm {cls.name!r}: {exc}.", "Fix algo-options.") from None
