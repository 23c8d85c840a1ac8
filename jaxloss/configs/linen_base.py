"""The base of the generated Flax Linen wrappers (:mod:`jaxloss.linen`); imports flax."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np

from jaxloss._src.tracing import is_tracer
from jaxloss.configs.calling import DeclaredLoss
from jaxloss.configs.registry import Declaration, check_config

__all__ = ["WrappedLoss", "wrapper_class"]


def _hashable(value: Any) -> Any:
  """Lists and concrete arrays as nested tuples of Python numbers (hashable, static under
  ``nn.jit``); traced values stay as they are."""
  if is_tracer(value) or not isinstance(value, (list, np.ndarray, jax.Array)):
    return value
  return _tuples(np.asarray(value).tolist())


def _tuples(value: Any) -> Any:
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class WrappedLoss(DeclaredLoss, nn.Module):
  """Base of the Linen wrappers: the hyper-parameters are the dataclass fields."""

  declaration: ClassVar[Declaration]

  def __post_init__(self) -> None:
    decl = self.declaration
    values = {k: getattr(self, k) for k in (*decl.hyperparameters, "loss_weight")}
    check_config(decl, values)
    for key, value in values.items():
      object.__setattr__(self, key, _hashable(value))
    super().__post_init__()

  def hyperparameters(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in self.declaration.hyperparameters}


def wrapper_class(decl: Declaration) -> type[WrappedLoss]:
  """The class of ``decl``: the generated one in :mod:`jaxloss.linen`, or one made here for a
  type without a class of its own."""
  from jaxloss import linen as generated

  cls = getattr(generated, decl.name, None)
  if isinstance(cls, type) and issubclass(cls, WrappedLoss) and cls.declaration is decl:
    return cls
  return _made_class(decl)


def _made_class(decl: Declaration) -> type[WrappedLoss]:
  """A class for a declaration without a generated one (its fields made here): the
  segmentation quick reference, ``build_loss(dict(type="dice"), backend="linen")``."""
  fields = dict(decl.hyperparameters)
  fields["reduction"] = decl.default_reduction
  fields["loss_weight"] = 1.0
  namespace = {"__annotations__": {k: Any for k in fields}, **fields,
               "declaration": decl, "__module__": "jaxloss.linen"}
  return type(decl.name, (WrappedLoss,), namespace)
