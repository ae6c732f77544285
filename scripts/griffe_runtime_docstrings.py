"""Griffe extension for the docs site (mkdocs.yml), so that the API reference renders ffkit's docstrings as written.

* **Docstrings assigned at import time.** Griffe reads the source without running it, so a function whose docstring
  is set after its definition (``dtg_vgg8.__doc__ = ...``: ffkit.models.dtg shares one Args section between
  builders) would have no docstring and be left out. For public module-level functions without a static docstring
  the extension imports the function and uses its runtime ``__doc__``.
* **Sphinx cross-reference roles.** ffkit's docstrings are Google style but refer to other objects the Sphinx way
  (``:class:`~ffkit.LocalTrainer```). Each role becomes an optional mkdocs-autorefs link to the object's
  documentation when Griffe can resolve the name, and inline code otherwise; ``~`` keeps only the last component as
  the link text, as in Sphinx.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _resolve(obj: griffe.Object, name: str, collection: Any) -> str | None:
    """The canonical path of ``name`` as seen from ``obj``'s docstring, or ``None``."""
    try:
        found = collection.get_member(name)  # an absolute path such as ffkit.layers.CWConv
    except Exception:  # noqa: BLE001
        found = None
    if found is None:
        scope: griffe.Object | None = obj
        while scope is not None and found is None:
            try:
                head, _, rest = name.partition(".")
                path = scope.resolve(head)
                found = collection.get_member(f"{path}.{rest}" if rest else path)
            except Exception:  # noqa: BLE001 - not a name of this scope: try the enclosing one
                found = None
            scope = scope.parent
    if found is None:
        return None
    try:
        return found.final_target.path if found.is_alias else found.path
    except Exception:  # noqa: BLE001 - an alias whose target is outside the loaded packages
        return found.path


def _rewrite(obj: griffe.Object, text: str, collection: Any) -> str:
    def link(match: re.Match) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        name = target.lstrip("~.")
        title = name.rsplit(".", 1)[-1] if short or target.startswith(".") else name
        path = _resolve(obj, name, collection)
        if path is None:
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(link, text)


class RuntimeDocstrings(griffe.Extension):
    def on_function_instance(self, *, node: Any, func: griffe.Function, agent: Any, **kwargs: Any) -> None:
        if func.docstring is not None or func.name.startswith("_") or not func.parent or not func.parent.is_module:
            return
        try:
            runtime = griffe.dynamic_import(func.path)
        except Exception:  # noqa: BLE001 - an object that cannot be imported simply keeps no docstring
            return
        doc = inspect.getdoc(runtime)
        if doc:
            func.docstring = griffe.Docstring(
                doc,
                parent=func,
                parser=getattr(agent, "docstring_parser", None),
                parser_options=getattr(agent, "docstring_options", None),
            )

    def on_package(self, *, pkg: griffe.Module, loader: Any, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _rewrite(obj, obj.docstring.value, loader.modules_collection)
