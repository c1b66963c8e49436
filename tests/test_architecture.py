"""The layers of ARCHITECTURE.md, checked: every import in src/cogql points down (or sideways
within its layer), torch stays in the engine and the hosts.

Every module is parsed with `ast`; module-level, function-level and TYPE_CHECKING imports all
count (a lazy import is still a dependency), relative imports are resolved. The tables below are
the rules: when a module moves, adjust the table, not the check. A module that no layer claims
fails the test, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cogql

SRC = Path(cogql.__file__).parent

# layer -> the modules it holds, by dotted prefix (a prefix claims itself and everything below
# it; the longest claiming prefix wins). Package modules are named `pkg.__init__`.
LAYERS: dict[str, tuple[str, ...]] = {
    "api": (
        "cogql.__init__",
        "cogql.__main__",
        "cogql.api",
        "cogql.compat",
        "cogql.algorithms",
        "cogql.cli",
        "cogql.playground",
    ),
    "language": ("cogql.language",),
    "constraints": ("cogql.constraints",),
    "runtime": ("cogql.runtime",),
    "client": ("cogql.lmtp",),
    "hosts": (
        "cogql.serve",
        "cogql.lmtp.transports.inprocess",
        "cogql.replicate.cog",
    ),
    "deploy": ("cogql.replicate", "cogql.replicate.deploy", "cogql.replicate.emulator"),
    "engine": ("cogql.engine",),
    "grammar": ("cogql.grammar",),
    "base": (
        "cogql.errors",
        "cogql.tokenizer",
        "cogql.locations",
        "cogql.model_names",
        "cogql.model_files",
        "cogql._lazy",
        "cogql.extras",
        "cogql.http_thread",
    ),
}

# layer -> the other layers it may import (its own layer always)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "api": frozenset(LAYERS),
    "runtime": frozenset({"constraints", "language", "client", "grammar", "base"}),
    "constraints": frozenset({"language", "grammar", "base"}),
    "language": frozenset({"base"}),
    "client": frozenset({"grammar", "base"}),
    "hosts": frozenset({"engine", "client", "grammar", "base"}),
    "deploy": frozenset({"hosts", "client", "base"}),
    "engine": frozenset({"grammar", "base"}),
    "grammar": frozenset({"base"}),
    "base": frozenset(),
}


@dataclass(frozen=True)
class Allowance:
    """An import the layer table forbids that is allowed anyway, for a stated reason; with
    `lazy_only`, only from inside a function (so importing the importer costs nothing)."""

    importer: str | tuple[str, ...]  # module prefixes (a module's name before and after a move)
    imported: str | tuple[str, ...]  # module prefixes (or third-party top-level names)
    lazy_only: bool
    reason: str


ALLOWANCES: tuple[Allowance, ...] = (
    Allowance(
        "cogql.engine",
        "cogql.lmtp.messages",
        lazy_only=False,
        reason="the one wire schema: the engine takes Ops and gives Events",
    ),
    Allowance(
        "cogql.runtime",
        "cogql.lmtp.transports.inprocess",
        lazy_only=True,
        reason="a `local:` model is opened through the in-process host, loaded only then",
    ),
    Allowance(
        "cogql.runtime.lmql_tokenizer",
        "cogql.engine.models",
        lazy_only=True,
        reason="lmql.tokenizer(<model name>): a GGUF model is converted to find its tokenizer, "
        "which is the engine's model-file work (engine/models.py imports no torch itself)",
    ),
    Allowance(
        "cogql.replicate.deploy.sources",
        "cogql.engine.models",
        lazy_only=False,
        reason="a build converts a GGUF model into the project's checkpoints/ "
        "(engine/models.py imports no torch at module level)",
    ),
    Allowance(
        "cogql.runtime.scope",
        ("cogql.__init__", "cogql.compat"),
        lazy_only=True,
        reason="a query's globals hold `cogql` and `lmql` (cogql.compat), as LMQL's compiled "
        "module imports lmql",
    ),
    Allowance(
        "cogql.tokenizer",
        "transformers",
        lazy_only=True,
        reason="llguidance builds its tokenizer from a transformers one (no torch needed)",
    ),
)

# third-party packages only some layers may import (anywhere in a module)
RESTRICTED_PACKAGES: dict[str, frozenset[str]] = {
    "torch": frozenset({"engine", "hosts"}),
    "transformers": frozenset({"engine", "hosts"}),
    "safetensors": frozenset({"engine", "hosts"}),
    "vllm": frozenset({"engine"}),  # one engine among others: the hosts see the protocol
    "llama_cpp": frozenset({"engine"}),  # likewise
}


# --------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # a module of the package, or a third-party top-level name
    line: int
    lazy: bool  # not run on import: inside a function or under `if TYPE_CHECKING:`


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name of every module under the package folder `root` (named like the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts)] = path
    return out


def _package_of(module: str) -> str:
    return module.rsplit(".", 1)[0]  # `a.b.__init__` -> `a.b`; `a.b.c` -> `a.b`


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The module an import of `name` loads: itself, its package's __init__, or (third party)
    its top-level name."""
    if name in known:
        return name
    if f"{name}.__init__" in known:
        return f"{name}.__init__"
    root = next(iter(known)).split(".")[0] if known else ""
    if name.split(".")[0] == root:
        return _resolve(name.rsplit(".", 1)[0], known) if "." in name else f"{root}.__init__"
    return name.split(".")[0]


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name, known)
                    found.append(Import(module, target, child.lineno, lazy))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = _package_of(module)
                    for _ in range(child.level - 1):
                        base = _package_of(base)
                    source = f"{base}.{child.module}" if child.module else base
                else:
                    source = child.module or ""
                for alias in child.names:
                    sub = f"{source}.{alias.name}"
                    as_module = sub in known or f"{sub}.__init__" in known
                    target = _resolve(sub if as_module else source, known)
                    found.append(Import(module, target, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def layer_of(module: str, layers: dict[str, tuple[str, ...]]) -> str | None:
    best: tuple[int, str] | None = None
    for layer, prefixes in layers.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), layer)
    return best[1] if best else None


def _allowed_by(imp: Import, allowances: tuple[Allowance, ...]) -> Allowance | None:
    def claims(prefixes: str | tuple[str, ...], name: str) -> bool:
        prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    for a in allowances:
        if claims(a.importer, imp.importer) and claims(a.imported, imp.imported):
            return a
    return None


def violations(
    root: Path,
    layers: dict[str, tuple[str, ...]] = LAYERS,
    may_import: dict[str, frozenset[str]] = MAY_IMPORT,
    allowances: tuple[Allowance, ...] = ALLOWANCES,
    restricted: dict[str, frozenset[str]] = RESTRICTED_PACKAGES,
) -> list[str]:
    """Every import under the package folder `root` that points against the layers."""
    known = module_names(root)
    problems = []
    for module, path in known.items():
        here = layer_of(module, layers)
        if here is None:
            problems.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        for imp in imports_of(module, path, known):
            if imp.imported in known:
                there = layer_of(imp.imported, layers)
                ok = there == here or there in may_import[here]
            else:
                there = f"third-party {imp.imported}"
                ok = imp.imported not in restricted or here in restricted[imp.imported]
            allowance = None if ok else _allowed_by(imp, allowances)
            if ok or (allowance and (imp.lazy or not allowance.lazy_only)):
                continue
            how = "lazily" if imp.lazy else "at module level"
            hint = " (allowed only lazily: in a function or for type checking)" if allowance else ""
            problems.append(
                f"{path.relative_to(root.parent)}:{imp.line}: {module} ({here}) imports "
                f"{imp.imported} ({there}) {how}{hint}"
            )
    return list(dict.fromkeys(problems))  # one line per import statement and target


# --------------------------------------------------------------------------- the tests


def test_imports_point_down_the_layers() -> None:
    found = violations(SRC)
    assert not found, "imports against the layers (see ARCHITECTURE.md):\n" + "\n".join(found)


# what of the engine layer a host may name: the protocol, the choice, the sink, model files;
# never an engine class, so every host runs either engine
HOST_FACING_ENGINE = (
    "cogql.engine.__init__",
    "cogql.engine.protocol",
    "cogql.engine.choice",
    "cogql.engine.sink",
    "cogql.engine.models",
)


def test_hosts_reach_an_engine_only_through_its_protocol() -> None:
    known = module_names(SRC)
    found = [
        f"{imp.importer}:{imp.line} imports {imp.imported}"
        for module, path in known.items()
        if layer_of(module, LAYERS) == "hosts"
        for imp in imports_of(module, path, known)
        if layer_of(imp.imported, LAYERS) == "engine"
        and not any(
            imp.imported == p or imp.imported.startswith(p + ".") for p in HOST_FACING_ENGINE
        )
    ]
    assert not found, "hosts naming an engine's internals:\n" + "\n".join(found)


def test_every_allowance_is_still_used() -> None:
    """An allowance nothing needs any more is removed, so the exceptions do not outlive
    their reason."""
    known = module_names(SRC)
    used = {
        a
        for module, path in known.items()
        for imp in imports_of(module, path, known)
        if (a := _allowed_by(imp, ALLOWANCES)) is not None
    }
    assert set(ALLOWANCES) == used, [a for a in ALLOWANCES if a not in used]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "cogql"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_checker_catches_imports_against_the_layers(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "from .runtime import query\n",
            "engine/__init__.py": "",
            "engine/engine.py": "import torch\nfrom ..grammar import matching\n",
            "grammar/__init__.py": "",
            "grammar/matching.py": "import numpy\n",
            "lmtp/__init__.py": "",
            "lmtp/client.py": "from ..grammar.matching import x\n",
            "lmtp/transports/__init__.py": "",
            "lmtp/transports/inprocess.py": "from ...engine.engine import Engine\n",
            "language/__init__.py": "",
            "language/compiler.py": "def f():\n    from ..lmtp import client\n",
            "runtime/__init__.py": "",
            "runtime/query.py": (
                "from ..engine.engine import Engine\n"
                "from ..lmtp.transports import inprocess\n"
                "def open_local():\n"
                "    from ..lmtp.transports.inprocess import Engine\n"
                "    import torch\n"
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from ..engine import engine\n"
                "    from ..lmtp.transports.inprocess import Engine\n"
            ),
            "stray.py": "",
        },
    )
    found = violations(root)
    assert len(found) == 6, found
    assert any("runtime/query.py:1:" in f and "cogql.engine.engine (engine)" in f for f in found)
    assert any(
        "runtime/query.py:2:" in f and "at module level (allowed only lazily" in f for f in found
    )
    assert any("runtime/query.py:5:" in f and "third-party torch" in f for f in found)
    assert any("runtime/query.py:8:" in f and "(engine) lazily" in f for f in found)
    assert any("language/compiler.py:2:" in f and "lazily" in f for f in found)
    assert any(f.startswith("cogql.stray: in no layer") for f in found)


def test_the_checker_accepts_a_clean_package(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "import cogql.runtime.query\n",
            "runtime/__init__.py": "",
            "runtime/query.py": "from ..grammar import common_prefix\nfrom cogql import tokenizer\n",
            "grammar/__init__.py": "from .prefix import common_prefix\n",
            "grammar/prefix.py": "from .. import tokenizer\n",
            "tokenizer.py": "import os\n",
        },
    )
    assert violations(root) == []
