"""The layering of the Lambda code, checked statically over the import graph (docs/architecture.md).

Every ``.py`` file of app.py and chalicelib/ is parsed with ``ast`` (nothing is imported). Every import
counts: module level, inside functions, under ``if TYPE_CHECKING:``, ``import x`` and ``from x import y``,
relative imports resolved against the file's package, and ``importlib.import_module("literal")``.

1. chalicelib/ and app.py import nothing of jamsdr/, tests/ or benchmarks/.
2. The Lambda path (app.py and every chalicelib module not listed in TOOLING_MODULES) imports only the standard
   library, the runtime distributions (boto3/botocore from the Lambda runtime, aws_lambda_powertools and
   pydantic from the Powertools layer) and the part of chalice that ``chalice package`` puts in the zip.
3. Layers, lowest first: foundation < domain < handlers < app. A module imports only its own layer or
   lower; nothing in chalicelib/workflow/ imports chalicelib/handlers; no import cycle among chalicelib
   modules. Whatever the code does otherwise is listed, with its reason, in KNOWN_VIOLATIONS or
   KNOWN_CYCLES, and those sets must be exact: a fix forces the entry out, a new breach fails.
4. Every module has an explicit layer in LAYER: a new module fails until it is given one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THIS_TEST = "tests/unit/test_layering.py"

FOUNDATION = "foundation"
DOMAIN = "domain"
HANDLERS = "handlers"
APP = "app"
TOOLING = "tooling"
# Tooling ranks above everything, so nothing on the Lambda path may import it (a tooling module may import
# any chalicelib module).
RANK = {FOUNDATION: 0, DOMAIN: 1, HANDLERS: 2, APP: 3, TOOLING: 4}

# The layer of every module, written out so that it cannot grow silently. A new small module of shared names
# (errors, tags, regions, numbers, keys, codes ...) that imports only the standard library, the runtime
# distributions and other foundation modules belongs to the foundation.
LAYER: dict[str, str] = {
    # (a) foundation: shared names and plumbing, importing no other layer
    "chalicelib": FOUNDATION,  # the package's __init__ (a docstring)
    "chalicelib.aws": FOUNDATION,
    "chalicelib.clock": FOUNDATION,
    "chalicelib.codes": FOUNDATION,
    "chalicelib.dynamo_values": FOUNDATION,
    "chalicelib.errors": FOUNDATION,
    "chalicelib.keys": FOUNDATION,
    "chalicelib.observability": FOUNDATION,
    "chalicelib.regions": FOUNDATION,
    "chalicelib.settings": FOUNDATION,
    "chalicelib.retention": FOUNDATION,  # the snapshot budget's arithmetic: the settings validate with it
    "chalicelib.scoping": FOUNDATION,  # a context variable for a block: the runtime's per-invocation scopes
    "chalicelib.tags": FOUNDATION,
    "chalicelib.traffic": FOUNDATION,
    # (b) domain: detection, the recovery-point pipeline, notifications, the recovery chain
    "chalicelib.detection": DOMAIN,
    "chalicelib.detection.decision": DOMAIN,
    "chalicelib.detection.events": DOMAIN,
    "chalicelib.detection.heartbeats": DOMAIN,
    "chalicelib.detection.incident": DOMAIN,
    "chalicelib.detection.messages": DOMAIN,
    "chalicelib.detection.observe": DOMAIN,
    "chalicelib.detection.state": DOMAIN,
    "chalicelib.detection.store": DOMAIN,
    "chalicelib.detection.transition": DOMAIN,
    "chalicelib.detection.triggers": DOMAIN,
    "chalicelib.detection.watcher": DOMAIN,
    "chalicelib.notify": DOMAIN,
    "chalicelib.outbox": DOMAIN,
    "chalicelib.rds": DOMAIN,
    "chalicelib.report": DOMAIN,
    "chalicelib.snapshots": DOMAIN,
    "chalicelib.snapshots.points": DOMAIN,
    "chalicelib.snapshots.pitr": DOMAIN,
    "chalicelib.snapshots.publish": DOMAIN,
    "chalicelib.snapshots.quota": DOMAIN,
    "chalicelib.snapshots.replication": DOMAIN,
    "chalicelib.snapshots.rules": DOMAIN,
    "chalicelib.snapshots.tick": DOMAIN,
    "chalicelib.stacks": DOMAIN,
    "chalicelib.table": DOMAIN,
    "chalicelib.workflow": DOMAIN,
    "chalicelib.workflow.definitions": DOMAIN,
    "chalicelib.workflow.engine": DOMAIN,
    "chalicelib.workflow.ledger": DOMAIN,
    "chalicelib.workflow.model": DOMAIN,
    "chalicelib.workflow.records": DOMAIN,
    "chalicelib.workflow.registry": DOMAIN,
    "chalicelib.workflow.runners": DOMAIN,
    "chalicelib.workflow.starter": DOMAIN,
    "chalicelib.workflow.steps": DOMAIN,
    "chalicelib.workflow.steps.cleanup": DOMAIN,
    "chalicelib.workflow.steps.common": DOMAIN,
    "chalicelib.workflow.steps.failback": DOMAIN,
    "chalicelib.workflow.steps.fence": DOMAIN,
    "chalicelib.workflow.steps.isolation": DOMAIN,
    "chalicelib.workflow.steps.recovery": DOMAIN,
    # (c) handlers: the Chalice blueprints
    "chalicelib.handlers": HANDLERS,
    "chalicelib.handlers.detection": HANDLERS,
    "chalicelib.handlers.payloads": HANDLERS,
    "chalicelib.handlers.snapshots": HANDLERS,
    "chalicelib.handlers.workflow": HANDLERS,
    # (d) the app: wiring only
    "app": APP,
}

# chalicelib modules that nothing on the Lambda path imports, each with the reason it lives in chalicelib.
# They are exempt from the runtime allowlist (rule 2), not from rule 1 nor from DEV_ONLY. None today: the
# Powertools deploy guard moved to jamsdr/ (tooling belongs there, out of the Lambda zip).
TOOLING_MODULES: dict[str, str] = {}

# Imports that break the layer rule today, (importer, imported module) -> one-line reason. Must be exact.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

# Import cycles among chalicelib modules today (each a strongly connected component), with the reason.
# Must be exact.
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset({"chalicelib.notify", "chalicelib.outbox"}): "type-only: outbox names notify.NotificationKind "
    "under TYPE_CHECKING while notify builds an Outbox; no runtime cycle",
}

# Third-party top-level packages the Lambda path may import, and where Lambda gets them.
RUNTIME_DISTRIBUTIONS: dict[str, str] = {
    "boto3": "the Lambda Python runtime",
    "botocore": "the Lambda Python runtime",
    "aws_lambda_powertools": "the public Powertools layer (.chalice/config.json layers)",
    "pydantic": "the public Powertools layer (built with aws-lambda-powertools[all])",
}
# `chalice package` copies only chalice/__init__.py and chalice/app.py into the zip (chalice/deploy/packager.py).
CHALICE_RUNTIME = frozenset({"chalice", "chalice.app"})
# Distributions for the operator's machine and the tests only (top-level import names).
DEV_ONLY: dict[str, str] = {
    "moto": "moto",
    "pytest": "pytest",
    "_pytest": "pytest",
    "hypothesis": "hypothesis",
    "cfnlint": "cfn-lint",
    "checkov": "checkov",
    "click": "click",
    "rich": "rich",
    "yaml": "PyYAML",
    "mypy_boto3": "boto3-stubs",
    "boto3_stubs": "boto3-stubs",
    "botocore_stubs": "botocore-stubs",
}
# Dev-only stubs the Lambda code may import under ``if TYPE_CHECKING:`` (never executed at run time): the
# typed boto3 clients, so mypy checks every AWS call's operation and parameters.
TYPE_ONLY_DEV = frozenset({"boto3-stubs"})
OFF_LIMITS = ("jamsdr", "tests", "benchmarks")  # repository packages the Lambda code never imports


@dataclass(frozen=True)
class Import:
    """One imported name as written in one file."""

    importer: str  # dotted module name of the importing file
    path: str  # the importing file, relative to the repository
    line: int
    statement: str  # the import as written, on one line
    dotted: str  # what is imported, absolute: a module, or module.name for ``from module import name``
    module: str  # the module part alone (``from module import name``: module; ``import a.b``: a.b)
    type_only: bool  # under ``if TYPE_CHECKING:``

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def where(self) -> str:
        only = " (TYPE_CHECKING only)" if self.type_only else ""
        return f"{self.path}:{self.line}: `{self.statement}`{only}"


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _files() -> tuple[Path, ...]:
    return (ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py")))


@cache
def modules() -> frozenset[str]:
    return frozenset(_module_name(path) for path in _files())


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under ``node``, with whether it sits in the body of an ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child, type_only
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, type_only
        yield from _walk(child, type_only)


def _is_import_module_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    first = node.args[0]
    return name in {"import_module", "__import__"} and isinstance(first, ast.Constant) and isinstance(
        first.value, str)


def _imports_of(path: Path, root: Path = ROOT) -> Iterator[Import]:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    importer = _module_name(path, root)
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    rel = path.relative_to(root).as_posix()

    def make(node: ast.stmt | ast.expr, dotted: str, module: str, type_only: bool) -> Import:
        statement = " ".join((ast.get_source_segment(source, node) or "").split())
        return Import(importer, rel, node.lineno, statement, dotted, module, type_only)

    for node, type_only in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield make(node, alias.name, alias.name, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "__future__":
                continue
            for alias in node.names:
                dotted = module if alias.name == "*" else f"{module}.{alias.name}"
                yield make(node, dotted, module, type_only)
        elif _is_import_module_call(node):
            assert isinstance(node, ast.Call) and isinstance(node.args[0], ast.Constant)
            literal = str(node.args[0].value)
            yield make(node, literal, literal, type_only)


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for path in _files() for imp in _imports_of(path))


def internal_target(imp: Import) -> str | None:
    """The app/chalicelib module an import loads (longest known prefix of what it names), else None."""
    if imp.top not in {"chalicelib", "app"}:
        return None
    parts = imp.dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules():
            return candidate
    return None


def edges() -> Iterator[tuple[Import, str]]:
    """Each import between two of the scanned modules, a module importing itself left out."""
    for imp in all_imports():
        target = internal_target(imp)
        if target is not None and target != imp.importer:
            yield imp, target


def _dev_only(top: str) -> str | None:
    if top.startswith("mypy_boto3_"):
        return "boto3-stubs"
    return DEV_ONLY.get(top)


def _report(problems: Iterable[str]) -> str:
    return "\n".join(sorted(set(problems)))


# --- 4. every module has a layer ------------------------------------------------------------------------


def test_every_module_has_an_explicit_layer() -> None:
    problems = [f"add {module} to a layer in {THIS_TEST}" for module in sorted(modules() - LAYER.keys())]
    problems += [f"{module} is in LAYER of {THIS_TEST} but no longer exists: remove it"
                 for module in sorted(LAYER.keys() - modules())]
    assert not problems, _report(problems)


def test_the_tables_agree() -> None:
    assert set(RANK) == {FOUNDATION, DOMAIN, HANDLERS, APP, TOOLING}
    assert set(LAYER.values()) <= set(RANK)
    assert {module for module, layer in LAYER.items() if layer == TOOLING} == set(TOOLING_MODULES)
    assert all(reason.strip() for reason in (*TOOLING_MODULES.values(), *KNOWN_VIOLATIONS.values(), *KNOWN_CYCLES.values()))
    # The layers the brief fixes by name.
    for module, layer in LAYER.items():
        if module.startswith("chalicelib.handlers"):
            assert layer == HANDLERS, module
        elif module.startswith(("chalicelib.workflow", "chalicelib.snapshot")):
            assert layer == DOMAIN, module


def test_the_parser_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The extraction itself: function-level, relative, TYPE_CHECKING and import_module imports all count."""
    package = tmp_path / "chalicelib" / "workflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from . import model\n")
    (package / "sample.py").write_text(
        "import importlib\nfrom typing import TYPE_CHECKING\nfrom ..clock import Clock\nimport boto3.session\n"
        "if TYPE_CHECKING:\n    from chalicelib.notify import Notifier\n"
        "def later():\n    from .ledger import Ledger\n    import moto\n"
        "    return importlib.import_module('chalicelib.handlers.payloads')\n"
    )
    found = {(imp.importer, imp.module, imp.dotted, imp.type_only)
             for path in (package / "__init__.py", package / "sample.py") for imp in _imports_of(path, tmp_path)}
    init, sample = "chalicelib.workflow", "chalicelib.workflow.sample"
    assert found == {
        (init, "chalicelib.workflow", "chalicelib.workflow.model", False),
        (sample, "importlib", "importlib", False),
        (sample, "typing", "typing.TYPE_CHECKING", False),
        (sample, "chalicelib.clock", "chalicelib.clock.Clock", False),
        (sample, "boto3.session", "boto3.session", False),
        (sample, "chalicelib.notify", "chalicelib.notify.Notifier", True),
        (sample, "chalicelib.workflow.ledger", "chalicelib.workflow.ledger.Ledger", False),
        (sample, "moto", "moto", False),
        (sample, "chalicelib.handlers.payloads", "chalicelib.handlers.payloads", False),
    }


# --- 1. the Lambda code never imports the operator's tools, the tests or the benchmarks --------------------


def test_chalicelib_imports_no_jamsdr_tests_or_benchmarks() -> None:
    problems = [f"{imp.where()}: the Lambda code must not import {imp.top}/ (never deployed to Lambda)"
                for imp in all_imports() if imp.top in OFF_LIMITS]
    assert not problems, _report(problems)


# --- 2. the Lambda path stays light ---------------------------------------------------------------------


def _third_party_problem(imp: Import) -> str | None:
    top = imp.top
    if not top or top in sys.stdlib_module_names or top in {"chalicelib", "app", *OFF_LIMITS}:
        return None
    dev = _dev_only(top)
    if dev in TYPE_ONLY_DEV and imp.type_only:
        return None
    if dev is not None:
        only = " (under TYPE_CHECKING it may be used only for the boto3 stubs)" if imp.type_only else ""
        return f"{imp.where()}: {top} is the dev-only distribution {dev}, never on the Lambda path{only}"
    if imp.importer in TOOLING_MODULES or top in RUNTIME_DISTRIBUTIONS or imp.module in CHALICE_RUNTIME:
        return None
    if top == "chalice":
        return (f"{imp.where()}: {imp.module} is not in the deployment zip (`chalice package` bundles only "
                f"chalice/__init__.py and chalice/app.py); import from chalice.app, or list the module in "
                f"TOOLING_MODULES")
    return (f"{imp.where()}: {top} is not a Lambda runtime dependency (allowed: the standard library, "
            f"{', '.join(sorted(RUNTIME_DISTRIBUTIONS))}, chalice.app); nothing is bundled (requirements.txt): "
            f"ship it first, then add it to RUNTIME_DISTRIBUTIONS in {THIS_TEST}")


def test_the_boto3_stubs_are_allowed_only_for_type_checking() -> None:
    typed = Import("chalicelib.rds", "chalicelib/rds.py", 1, "from mypy_boto3_rds import RDSClient",
                   "mypy_boto3_rds.RDSClient", "mypy_boto3_rds", type_only=True)
    assert _third_party_problem(typed) is None
    at_run_time = Import(**{**typed.__dict__, "type_only": False})
    assert "dev-only distribution boto3-stubs" in (_third_party_problem(at_run_time) or "")
    other_dev = Import(**{**typed.__dict__, "statement": "import moto", "dotted": "moto", "module": "moto"})
    assert "dev-only distribution moto" in (_third_party_problem(other_dev) or "")


def test_the_lambda_path_imports_only_runtime_dependencies() -> None:
    problems = [problem for imp in all_imports() if (problem := _third_party_problem(imp)) is not None]
    assert not problems, _report(problems)


def test_the_lambda_path_reaches_every_runtime_distribution_it_lists() -> None:
    """The allowlist is no wider than the code: each runtime distribution is imported somewhere."""
    used = {imp.top for imp in all_imports() if imp.importer not in TOOLING_MODULES}
    assert sorted(set(RUNTIME_DISTRIBUTIONS) - used) == []


def test_nothing_on_the_lambda_path_imports_a_tooling_module() -> None:
    problems = [f"{imp.where()}: {target} is tooling ({TOOLING_MODULES[target]}); the Lambda path must not import it"
                for imp, target in edges() if target in TOOLING_MODULES and imp.importer not in TOOLING_MODULES]
    assert not problems, _report(problems)


# --- 3. layers, the workflow/handlers rule, cycles ----------------------------------------------------------


def layer_violations() -> dict[tuple[str, str], list[Import]]:
    found: dict[tuple[str, str], list[Import]] = {}
    for imp, target in edges():
        source_layer, target_layer = LAYER.get(imp.importer), LAYER.get(target)
        if source_layer is None or target_layer is None:
            continue  # test_every_module_has_an_explicit_layer reports it
        if RANK[target_layer] > RANK[source_layer]:
            found.setdefault((imp.importer, target), []).append(imp)
    return found


def test_a_module_imports_only_its_own_layer_or_lower() -> None:
    found = layer_violations()
    new = [f"{imp.where()}: {key[0]} ({LAYER[key[0]]}) imports {key[1]} ({LAYER[key[1]]}), a higher layer"
           for key, imps in found.items() if key not in KNOWN_VIOLATIONS for imp in imps]
    fixed = [f"{key[0]} -> {key[1]} no longer breaks the layering: remove it from KNOWN_VIOLATIONS in {THIS_TEST}"
             for key in KNOWN_VIOLATIONS if key not in found]
    assert not new + fixed, _report(new + fixed)


def test_the_workflow_never_imports_the_handlers() -> None:
    problems = [f"{imp.where()}: chalicelib/workflow/ must not import chalicelib/handlers/ ({target})"
                for imp, target in edges()
                if imp.importer.startswith("chalicelib.workflow") and target.startswith("chalicelib.handlers")]
    assert not problems, _report(problems)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in modules() if module.startswith("chalicelib")}
    for imp, target in edges():
        if imp.importer in graph and target in graph:
            graph[imp.importer].add(target)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph[start])
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph[node])
    return seen


def cycles_of(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module: each holds at least one cycle."""
    reach = {module: _reachable(graph, module) for module in graph}
    return {frozenset({module, *(other for other in reach[module] if module in reach[other])})
            for module in graph if module in reach[module]}


def test_no_import_cycles_but_the_known_ones() -> None:
    found = cycles_of(_graph())
    lines: dict[frozenset[str], set[str]] = {}
    for imp, target in edges():
        for cycle in found:
            if imp.importer in cycle and target in cycle:
                lines.setdefault(cycle, set()).add(f"    {imp.where()}")
    new = [f"import cycle among {', '.join(sorted(cycle))}:\n" + "\n".join(sorted(lines[cycle]))
           for cycle in found - KNOWN_CYCLES.keys()]
    fixed = [f"no cycle among {', '.join(sorted(cycle))} any more: remove it from KNOWN_CYCLES in {THIS_TEST}"
             for cycle in KNOWN_CYCLES.keys() - found]
    assert not new + fixed, _report(new + fixed)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert cycles_of(graph) == {frozenset({"a", "b", "c"}), frozenset({"d", "e"})}
