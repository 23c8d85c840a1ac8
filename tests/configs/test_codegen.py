"""The checked-in Flax wrapper modules are what the declaration table generates, and type
checkers and ``inspect`` see real constructors."""

import inspect
import pathlib

import pytest

from jaxloss.configs import codegen, registry

ROOT = pathlib.Path(__file__).resolve().parents[2] / "jaxloss"


@pytest.mark.parametrize("backend", ["nnx", "linen"])
def test_generated_wrappers_are_up_to_date(backend):
  checked_in = (ROOT / f"{backend}.py").read_text()
  assert checked_in == codegen.render(backend), (
      f"jaxloss/{backend}.py is stale: run `python -m jaxloss.configs.codegen`.")


def test_wrapper_signatures_are_the_hyperparameters():
  from jaxloss import linen, nnx
  for decl in registry.flax_declarations():
    expected = {*decl.hyperparameters, "loss_weight"}
    if decl.default_reduction is not None:
      expected.add("reduction")
    assert set(inspect.signature(getattr(nnx, decl.name)).parameters) == expected, decl.name
    fields = set(inspect.signature(getattr(linen, decl.name)).parameters) - {"parent", "name"}
    assert fields == expected, decl.name
