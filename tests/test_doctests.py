"""Every `>>>` example in the library's docstrings runs and prints what it shows."""
import doctest
import importlib
import pkgutil

import pytest

import sparsejax

# The model zoo's examples are run by tests/test_models.py::test_docstring_examples.
MODULES = sorted(m.name for m in pkgutil.walk_packages(sparsejax.__path__, "sparsejax.")
                 if not m.name.startswith("sparsejax.models"))


@pytest.mark.parametrize("name", ["sparsejax"] + MODULES)
def test_docstring_examples(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
  assert result.failed == 0, name


def test_the_core_modules_have_examples():
  for name in ("sparsejax", "sparsejax.masks", "sparsejax.select", "sparsejax.transform", "sparsejax.pruners",
               "sparsejax.pruners.dst", "sparsejax.pruners.movement", "sparsejax.pruners.pai"):
    assert doctest.testmod(importlib.import_module(name)).attempted > 0, name
