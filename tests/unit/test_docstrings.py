"""Every docstring example in `keras_sam` runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import keras_sam


def _modules() -> list[str]:
    names = [keras_sam.__name__]
    for info in pkgutil.walk_packages(keras_sam.__path__, prefix="keras_sam."):
        if info.name != "keras_sam.__main__":
            names.append(info.name)
    return sorted(names)


def test_the_package_has_docstring_examples():
    examples = 0
    finder = doctest.DocTestFinder()
    for name in _modules():
        examples += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert examples >= 30


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert failures == 0
