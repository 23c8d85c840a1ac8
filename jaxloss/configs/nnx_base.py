"""The base of the generated Flax NNX wrappers (:mod:`jaxloss.nnx`); imports flax."""

from __future__ import annotations

import inspect
from typing import Any

from flax import nnx

from jaxloss.configs.calling import DeclaredLoss
from jaxloss.configs.registry import Declaration, check_config

__all__ = ["WrappedLoss", "wrapper_class"]


class WrappedLoss(DeclaredLoss, nnx.Module):
  """Base of the NNX wrappers: the hyper-parameters in ``self.hparams`` (arrays as data)."""

  def __init__(self, **config: Any) -> None:
    decl = self.declaration
    check_config(decl, config)
    reduction = config.pop("reduction", None)
    self.loss_weight = config.pop("loss_weight", 1.0)
    self.reduction = decl.default_reduction if reduction is None else reduction
    self.hparams = nnx.data({**decl.hyperparameters, **config})

  def hyperparameters(self) -> dict[str, Any]:
    return dict(self.hparams)

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(**kwargs)
    # inspect.signature(cls) shows the constructor's keywords, not NNX's (*args, **kwargs)
    init = inspect.signature(cls.__init__)
    cls.__signature__ = init.replace(  # type: ignore[attr-defined]
        parameters=list(init.parameters.values())[1:])


def wrapper_class(decl: Declaration) -> type[WrappedLoss]:
  """The class of ``decl``: the generated one in :mod:`jaxloss.nnx`, or one made here for a
  type without a class of its own."""
  from jaxloss import nnx as generated

  cls = getattr(generated, decl.name, None)
  if isinstance(cls, type) and issubclass(cls, WrappedLoss) and cls.declaration is decl:
    return cls
  return _made_class(decl)


def _made_class(decl: Declaration) -> type[WrappedLoss]:
  """A class for a declaration without a generated one (keyword constructor): the
  segmentation quick reference, ``build_loss(dict(type="dice"), backend="nnx")``."""

  def __init__(self: WrappedLoss, **config: Any) -> None:
    WrappedLoss.__init__(self, **config)

  return type(decl.name, (WrappedLoss,), {"declaration": decl, "__init__": __init__,
                                          "__module__": "jaxloss.nnx"})
