"""The registry as data: what ``ffkit models`` shows of each builder, and the torch-free catalogue made from it.

``ffkit models`` answers without importing torch (which every builder's module needs) by reading
``ffkit/_model_catalogue.py``, a module generated from the live registry by::

    python -m ffkit.models._catalogue

Run it after changing a built-in builder's name, kind, docstring or arguments; ``tests/test_cli_fast.py`` fails
while the catalogue differs from the registry.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from ._registry import get_model_builder, list_models, model_kind

__all__ = ["describe_model", "describe_models", "catalogue_source", "CATALOGUE_PATH"]

#: The generated module, beside the package's ``__init__.py`` (outside :mod:`ffkit.models`, whose import builds the
#: registry and so imports torch).
CATALOGUE_PATH = Path(__file__).resolve().parent.parent / "_model_catalogue.py"

_HEADER = '''"""The built-in model builders as data, so that ``ffkit models`` lists them without importing torch.

Generated from the registry (ffkit.models) by ``python -m ffkit.models._catalogue``: do not edit by hand. Each entry
is a builder's kind, the first paragraph of its docstring and its keyword arguments (``annotation`` and ``default`` as
text, ``default`` ``None`` when the argument is required).
"""

from __future__ import annotations

from typing import Any

'''


def describe_model(name: str) -> dict[str, Any]:
    """What ``ffkit models`` shows of the builder registered as ``name``: its ``kind``, its docstring's first
    paragraph on one line (``doc``; the command prints its first sentence) and its keyword arguments
    (``parameters``: each one's ``name``, ``annotation`` and ``default`` as text, ``None`` where it has none, and
    ``var_keyword`` for ``**kwargs``)."""
    builder = get_model_builder(name)
    parameters = [
        {
            "name": p.name,
            "annotation": _annotation(p.annotation),
            "default": None if p.default is inspect.Parameter.empty else repr(p.default),
            "var_keyword": p.kind is inspect.Parameter.VAR_KEYWORD,
        }
        for p in inspect.signature(builder).parameters.values()
    ]
    doc = " ".join((builder.__doc__ or "").strip().split("\n\n")[0].split())
    return {"kind": model_kind(name), "doc": doc, "parameters": parameters}


def _annotation(annotation: Any) -> str | None:
    """An annotation as source text: ``int``, not ``<class 'int'>``, for builders without postponed annotations."""
    if annotation is inspect.Parameter.empty:
        return None
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def describe_models(*, builtin: bool = False) -> dict[str, dict[str, Any]]:
    """:func:`describe_model` of every registered builder by name, sorted; ``builtin=True``: only ffkit's own (those
    defined in :mod:`ffkit.models`), leaving out models registered at run time."""
    return {
        name: describe_model(name)
        for name in list_models()
        if not builtin or get_model_builder(name).__module__.startswith(f"{__package__}.")
    }


def catalogue_source() -> str:
    """The text of ``ffkit/_model_catalogue.py`` for the built-in builders of the live registry."""
    lines = [f"{_HEADER}MODELS: dict[str, dict[str, Any]] = {{"]
    for name, entry in describe_models(builtin=True).items():
        lines += [f"    {_literal(name)}: {{", f"        \"kind\": {_literal(entry['kind'])},"]
        lines += _wrapped("doc", entry["doc"])
        lines.append('        "parameters": [')
        for p in entry["parameters"]:
            fields = [f"{_literal(k)}: {_literal(v)}" for k, v in p.items()]
            one = f"            {{{', '.join(fields)}}},"
            if len(one) <= _WIDTH:
                lines.append(one)
            else:
                lines += ["            {", *(f"                {f}," for f in fields), "            },"]
        lines += ["        ],", "    },"]
    return "\n".join([*lines, "}", ""])


#: The generated lines' longest (the project's line length).
_WIDTH = 120


def _literal(value: str | bool | None) -> str:
    """``value`` as Python source: strings double-quoted (JSON's escapes are Python's too)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _wrapped(key: str, text: str) -> list[str]:
    """``"key": text,`` as source lines: on one line if it fits, else as adjacent literals of whole words in
    parentheses (their concatenation is ``text`` exactly)."""
    one = f"        {_literal(key)}: {_literal(text)},"
    if len(one) <= _WIDTH:
        return [one]
    pieces, piece = [], ""
    for word in re.findall(r"\S*\s*", text):  # words with the spaces after them: they add up to text
        if piece and len(piece) + len(word) > _WIDTH - 20:
            pieces.append(piece)
            piece = ""
        piece += word
    pieces.append(piece)
    return [f"        {_literal(key)}: (", *(f"            {_literal(p)}" for p in pieces if p), "        ),"]


def main(argv: list[str] | None = None) -> int:
    """Write :data:`CATALOGUE_PATH` (``--check``: only say whether it is up to date, exit status 1 if not)."""
    args = sys.argv[1:] if argv is None else argv
    text = catalogue_source()
    current = CATALOGUE_PATH.read_text() if CATALOGUE_PATH.is_file() else None
    if args == ["--check"]:
        fresh = current == text
        print(f"{CATALOGUE_PATH}: {'up to date' if fresh else 'stale; run python -m ffkit.models._catalogue'}")
        return 0 if fresh else 1
    if args:
        raise SystemExit(f"usage: python -m {__spec__.name if __spec__ else __name__} [--check]")
    if current != text:
        CATALOGUE_PATH.write_text(text)
    print(f"{CATALOGUE_PATH}: {'unchanged' if current == text else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
