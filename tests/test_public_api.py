"""The exported names: `cogql.__all__` is exactly the public API, every package says what it
offers in `__all__` and a docstring, and nothing else leaks into the namespaces."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import cogql

PUBLIC = {
    # queries
    "query", "query_from_string", "run", "run_sync", "run_file", "run_in_loop", "main",
    "F", "generate", "generate_sync", "QueryFunction", "LMQLQueryFunction", "QueryResult",
    "LMQLResult", "QueryStream", "stream", "decorators", "algorithms",
    # models and tokenizers
    "model", "Model", "LLM", "get_default_model", "get_default_scoring_model",
    "set_default_model", "LMQLTokenizer",
    # scoring
    "score", "score_sync", "ScoringResult",
    # events, output and tracing
    "QueryEvent", "ModelCall", "TextAppended", "VariableFinished", "QueryFinished",
    "headless", "printing", "silent", "InferenceCertificate", "Tracer", "certificate", "traced",
    # errors: the root, its families, and the concrete classes users catch most
    "CogqlError", "QueryError", "RunError", "ModelError", "TransportError", "DeployError",
    "QueryCompileError", "QuerySyntaxError", "HoleTypeError", "ConstraintError", "InputError",
    "DecoderError", "ConstraintUnsatisfiedError", "NoResultError", "ModelConfigError",
    "LMTPError",
}  # fmt: skip

ROOT = Path(cogql.__file__).parent
PACKAGES = sorted(
    "cogql" + "".join(f".{part}" for part in init.parent.relative_to(ROOT).parts)
    for init in ROOT.rglob("__init__.py")
)


def test_all_is_exactly_the_public_names() -> None:
    assert len(cogql.__all__) == len(set(cogql.__all__)), "a name is listed twice"
    assert set(cogql.__all__) == PUBLIC


def test_no_helper_leaks_into_the_cogql_namespace() -> None:
    """Beyond `__all__`, only cogql's own submodules (which Python sets as attributes once
    imported) may show in `dir(cogql)`: no typing names, helpers or foreign modules."""
    leaked = {
        name
        for name in dir(cogql)
        if not name.startswith("_")
        and name not in cogql.__all__
        and not _own_module(getattr(cogql, name), f"cogql.{name}")
    }
    assert leaked == set()


def _own_module(value: object, name: str) -> bool:
    return isinstance(value, types.ModuleType) and value.__name__ == name


def test_the_walk_finds_the_layers() -> None:
    assert {"cogql.language", "cogql.runtime", "cogql.lmtp", "cogql.engine"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_documents_and_exports(package: str) -> None:
    module = importlib.import_module(package)
    assert (module.__doc__ or "").strip(), f"{package} has no docstring"
    exported = module.__dict__.get("__all__")
    assert isinstance(exported, list), f"{package} has no __all__ list"
    assert all(isinstance(n, str) for n in exported)
    assert len(exported) == len(set(exported)), f"{package}.__all__ lists a name twice"
    for name in exported:
        value = getattr(module, name)  # raises when a listed name does not resolve
        assert value is not None, f"{package}.{name}"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_namespaces_hold_no_helpers(package: str) -> None:
    module = importlib.import_module(package)
    leaked = {
        name
        for name in vars(module)
        if not name.startswith("_")
        and name not in module.__all__
        and not _own_module(getattr(module, name), f"{package}.{name}")
    }
    assert leaked == set()


def test_unknown_names_raise_attribute_error() -> None:
    import cogql.lmtp

    with pytest.raises(AttributeError, match=r"cogql\.lmtp.*LMTPClinet"):
        getattr(cogql.lmtp, "LMTPClinet")  # noqa: B009


def test_packages_import_nothing_heavy() -> None:
    """Importing cogql, or any layer's package, loads no torch (the engine's names load it
    when first used)."""
    code = (
        "import sys, cogql, cogql.engine, cogql.runtime, cogql.lmtp, cogql.lmtp.transports, "
        "cogql.language, cogql.constraints; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_exported_functions_have_resolvable_hints() -> None:
    """Every exported function's annotations name real objects (tools that read them, such as
    typer or pydantic, would fail otherwise), and the query runners return QueryResult."""
    functions = {
        n: getattr(cogql, n) for n in cogql.__all__ if inspect.isfunction(getattr(cogql, n))
    }
    hints = {name: typing.get_type_hints(fn) for name, fn in functions.items()}
    for name in ("run", "run_sync", "run_file", "main"):
        assert hints[name]["return"] == cogql.QueryResult, name
    assert hints["generate"]["return"] == str | list[str]
    assert hints["model"]["return"] is cogql.Model
