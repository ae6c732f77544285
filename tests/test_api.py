"""The public API: everything in ``__all__`` exists and is documented."""

import importlib

import pytest

import ffkit

MODULES = ["ffkit", "ffkit.goodness", "ffkit.losses", "ffkit.layers", "ffkit.data", "ffkit.evaluation",
           "ffkit.models", "ffkit.train", "ffkit.recipes", "ffkit.objectives", "ffkit.network"]


@pytest.mark.parametrize("module", MODULES)
def test_all_names_exist_and_are_documented(module):
    mod = importlib.import_module(module)
    assert mod.__doc__, f"{module} has no module docstring"
    for name in mod.__all__:
        obj = getattr(mod, name)  # raises if __all__ lies
        if callable(obj) and not name.startswith("_") and not isinstance(obj, type(ffkit)):
            assert obj.__doc__, f"{module}.{name} has no docstring"


def test_version_is_single_sourced():
    from ffkit._version import __version__

    assert ffkit.__version__ == __version__
