"""The public API does not change by accident: ``hetdiff.__all__`` and every public name's
signature equal the committed snapshot ``tests/api_snapshot.json``.

A change on purpose (a new name, a new parameter, a new default) updates the snapshot in the
same commit, and CHANGELOG.md says what changed (docs/stability.md has the policy):

    python tests/test_api.py --update      # or: HETDIFF_UPDATE_API_SNAPSHOT=1 pytest tests/test_api.py
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("api_snapshot.json")
HEAVY = ("torch", "faiss", "diffusers", "transformers")


def _annotation(annotation: object) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return f": {text}"


def describe(obj: object) -> str:
    """A stable text of a public name: ``(a: int, *, b: str = 'x') -> Path`` for a function or
    class (its constructor), the ``repr`` of a constant. Written out by hand, so the text does not
    depend on how a Python version quotes string annotations."""
    if not callable(obj):
        return repr(obj)
    kind = ""
    if inspect.isclass(obj):
        kind = f"class({', '.join(base.__name__ for base in obj.__bases__)}) "
    try:
        signature = inspect.signature(obj)
    except ValueError:  # an exception type: the constructor of its builtin base
        return kind.rstrip()
    parts, star_done = [], False
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
            parts.append(f"*{p.name}{_annotation(p.annotation)}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            star_done = True
            parts.append("*")
        prefix = "**" if p.kind is p.VAR_KEYWORD else ""
        default = "" if p.default is p.empty else f" = {p.default!r}"
        parts.append(f"{prefix}{p.name}{_annotation(p.annotation)}{default}")
        if p.kind is p.POSITIONAL_ONLY:
            parts.append("/")
    returns = signature.return_annotation
    arrow = "" if returns is inspect.Signature.empty else f" -> {_annotation(returns)[2:]}"
    return f"{kind}({', '.join(parts)}){arrow}"


def current_api() -> dict:
    import hetdiff

    return {
        "__all__": list(hetdiff.__all__),
        "signatures": {name: describe(getattr(hetdiff, name)) for name in hetdiff.__all__},
    }


def test_public_api_matches_the_snapshot():
    current = current_api()
    if os.environ.get("HETDIFF_UPDATE_API_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    snapshot = json.loads(SNAPSHOT.read_text())
    hint = "the public API changed: if on purpose, run `python tests/test_api.py --update`"
    assert current["__all__"] == snapshot["__all__"], hint
    for name in current["__all__"]:
        assert current["signatures"][name] == snapshot["signatures"][name], f"{name}: {hint}"


def test_describe_sees_a_changed_default_and_a_new_parameter():
    def before(a: int, *, b: str = "x") -> None: ...
    def default_changed(a: int, *, b: str = "y") -> None: ...
    def parameter_added(a: int, *, b: str = "x", c: int = 0) -> None: ...

    assert describe(before) == "(a: int, *, b: str = 'x') -> None"
    assert describe(default_changed) != describe(before)
    assert describe(parameter_added) != describe(before)


def test_every_public_name_is_documented_and_resolves():
    import hetdiff

    assert sorted(hetdiff.__all__) == hetdiff.__all__ and len(set(hetdiff.__all__)) > 20
    for name in hetdiff.__all__:
        value = getattr(hetdiff, name)
        if callable(value):
            assert inspect.getdoc(value), f"hetdiff.{name} has no docstring"
    assert set(hetdiff.__all__) <= set(dir(hetdiff))
    with pytest.raises(AttributeError, match="no attribute 'smaple'"):
        hetdiff.smaple  # noqa: B018


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return {name.split(".")[0] for name in done.stdout.split()}


def test_import_hetdiff_loads_nothing_heavy():
    assert not _modules_after("import hetdiff; hetdiff.__all__") & set(HEAVY)


def test_the_api_functions_load_without_faiss_diffusers_or_transformers():
    names = "sample load_ensemble velocity_expert train_expert cluster run".split()
    loaded = _modules_after(f"import hetdiff\nfor n in {names!r}: getattr(hetdiff, n)")
    assert "torch" in loaded and not loaded & {"faiss", "diffusers", "transformers"}


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_api.py --update   (rewrites tests/api_snapshot.json)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    SNAPSHOT.write_text(json.dumps(current_api(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} ({len(current_api()['__all__'])} names)")
