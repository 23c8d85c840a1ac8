"""``build_loss``: a loss from an mmdetection-style config dict, for any backend."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from jaxloss._src.checks import check_choice
from jaxloss.configs.calling import DeclaredLoss
from jaxloss.configs.registry import Declaration, check_config, get_declaration

__all__ = ["BACKENDS", "Loss", "build_loss"]

BACKENDS = ("function", "nnx", "linen")


class Loss(DeclaredLoss):
  """A configured loss: a plain callable made by :func:`build_loss`.

  Called as ``loss(*inputs, weight=None, avg_factor=None, reduction_override=None,
  where=None, axis_name=None)`` (the last three of mmdetection's also positionally after
  the inputs), like an mmdetection loss module.
  """

  def __init__(self, declaration: Declaration, *, loss_weight: float = 1.0,
               reduction: str | None = None, **hparams: Any):
    check_config(declaration, {**hparams, "loss_weight": loss_weight})
    self.declaration = declaration
    self.hparams = {**declaration.hyperparameters, **hparams}
    self.reduction = reduction if reduction is not None else declaration.default_reduction
    self.loss_weight = loss_weight

  def hyperparameters(self) -> dict[str, Any]:
    return self.hparams


def build_loss(config: Mapping[str, Any], *, backend: str = "function") -> Any:
  """Builds a loss from a config dict such as ``dict(type="FocalLoss", gamma=2.0)``.

  ``type`` may carry mmdetection 3's scope (``"mmdet.FocalLoss"``). Keywords and value
  types are checked here, when the loss is built: a number given as a string (YAML reads
  ``1e-6`` as ``'1e-6'``; write ``1.0e-6``) or a nested dict is a ``TypeError`` naming the
  key; an unknown keyword or a refused value (``FocalLoss(use_sigmoid=False)``) a
  ``ValueError``.

  Args:
    config: ``type`` (a name of :func:`list_losses`) plus the loss's
      hyper-parameters, ``loss_weight`` and ``reduction``.
    backend: ``"function"`` (a plain callable :class:`Loss`), ``"nnx"``
      (a :mod:`jaxloss.nnx` module) or ``"linen"`` (a :mod:`jaxloss.linen`
      module). The segmentation quick-reference types (``"dice"``, ...) build for every
      backend too.

  Returns:
    The loss, called as ``loss(pred, target, weight=None, avg_factor=None,
    reduction_override=None)``; ``weight``, ``avg_factor`` and ``reduction_override`` may
    also follow the inputs positionally, as mmdetection's heads pass them.

  Raises:
    ValueError: unknown type, keyword or backend, or a refused value.
    TypeError: a value of the wrong type.

  Example:
    >>> import jax.numpy as jnp, jaxloss
    >>> loss = jaxloss.build_loss(dict(type="SmoothL1Loss", beta=0.5, loss_weight=2.0))
    >>> pred, target = jnp.array([0.25, 2.0]), jnp.zeros(2)
    >>> print(loss(pred, target))                    # 2 * mean([0.0625, 1.75])
    1.8125
    >>> print(loss(pred, target, reduction_override="sum"))
    3.625
    >>> print(loss(pred, target, jnp.array([1.0, 0.0]), 1.0))  # weight, avg_factor
    0.125
    >>> jaxloss.build_loss(dict(type="SmoothL1Loss", delta=1.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    ValueError: SmoothL1Loss got unknown keyword(s) ['delta']; valid keywords are: beta, ...
  """
  if not isinstance(config, Mapping) or "type" not in config:
    raise ValueError(f"build_loss expects a dict with a 'type' key, got {config!r}.")
  check_choice("backend", backend, BACKENDS)
  kwargs = dict(config)
  decl = get_declaration(kwargs.pop("type"))
  check_config(decl, kwargs)
  if backend == "function":
    return Loss(decl, **kwargs)
  base = importlib.import_module(f"jaxloss.configs.{backend}_base")  # imports flax
  return base.wrapper_class(decl)(**kwargs)
