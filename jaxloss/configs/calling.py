"""How every configured loss is called: the one ``__call__`` of :class:`Loss` and of the
Flax wrappers, in mmdetection's form ``loss(pred, target, weight, avg_factor=n)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxloss.configs.registry import Declaration, scale_output

__all__ = ["DeclaredLoss", "call_declared", "config_repr"]

_TRAILING = ("weight", "avg_factor", "reduction_override")


def _split_inputs(decl: Declaration, hparams: Mapping[str, Any], args: tuple,
                  given: dict[str, Any]) -> tuple:
  """The arrays of a call, its further positional arguments moved into ``given``."""
  counts = decl.input_counts(hparams)
  if len(counts) != 1:
    if len(args) not in counts:
      raise TypeError(f"{decl.name} takes {' or '.join(map(str, counts))} positional inputs, "
                      f"got {len(args)}.")
    return args
  n = counts[0]
  if not n <= len(args) <= n + len(_TRAILING):
    under = (f" with {decl.more_inputs_with}={bool(hparams.get(decl.more_inputs_with))}"
             if decl.more_inputs_with else "")
    raise TypeError(
        f"{decl.name} takes {n} positional inputs{under}, optionally followed by "
        f"{', '.join(_TRAILING)} (as mmdetection's loss modules), got {len(args)} "
        f"positional arguments.")
  for key, value in zip(_TRAILING, args[n:], strict=False):
    if given[key] is not None:
      raise TypeError(f"{decl.name} got `{key}` both positionally and as a keyword.")
    given[key] = value
  return args[:n]


def call_declared(decl: Declaration, hparams: Mapping[str, Any], reduction: str | None,
                  loss_weight: float, args: tuple, **given: Any) -> Any:
  """Calls ``decl.fn`` the way mmdetection's loss modules are called.

  ``args`` are the declared inputs, then optionally ``weight, avg_factor,
  reduction_override``; ``given`` holds those and ``where``, ``axis_name`` by keyword.
  """
  given = {k: given.get(k) for k in (*_TRAILING, "where", "axis_name")}
  inputs = _split_inputs(decl, hparams, args, given)
  missing = [k for k, v in hparams.items() if v is inspect.Parameter.empty]
  if missing:
    raise TypeError(f"{decl.name} needs the hyper-parameter(s) {missing} (no default); "
                    f"pass them when building it, e.g. {missing[0]}=...")
  kwargs = dict(hparams)
  given["reduction"] = given.pop("reduction_override") or reduction
  for key, value in given.items():
    if value is None:
      continue
    if key not in decl.common:
      raise TypeError(f"{decl.name} does not take `{key}`.")
    kwargs[key] = value
  return scale_output(decl.fn(*inputs, **kwargs), loss_weight)


def _differs(value: Any, default: Any) -> bool:
  if value is default:
    return False
  try:
    return not bool(np.all(np.asarray(value == default)))
  except (TypeError, ValueError):
    return True


def config_repr(name: str, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
  """``Name(key=value, ...)`` of the values that differ from their defaults."""
  shown = [f"{k}={v!r}" for k, v in values.items()
           if k not in defaults or _differs(v, defaults[k])]
  return f"{name}({', '.join(shown)})"


class DeclaredLoss:
  """The call and ``repr`` shared by :class:`~jaxloss.configs.build.Loss` and the Flax
  wrappers; a subclass sets ``declaration`` and provides :meth:`hyperparameters`,
  ``reduction`` and ``loss_weight``."""

  declaration: Declaration
  reduction: Any
  loss_weight: Any

  def hyperparameters(self) -> dict[str, Any]:
    raise NotImplementedError

  def __call__(self, *args: Any, weight: Any = None, avg_factor: Any = None,
               reduction_override: str | None = None, where: Any = None,
               axis_name: Any = None) -> Any:
    """``loss(*inputs[, weight[, avg_factor[, reduction_override]]], where=None,
    axis_name=None)``, as mmdetection's ``forward(pred, target, weight=None,
    avg_factor=None, reduction_override=None)``."""
    return call_declared(self.declaration, self.hyperparameters(),
                         getattr(self, "reduction", None),
                         self.loss_weight, args, weight=weight, avg_factor=avg_factor,
                         reduction_override=reduction_override, where=where,
                         axis_name=axis_name)

  def __repr__(self) -> str:
    decl = self.declaration
    values = {**self.hyperparameters(), "reduction": getattr(self, "reduction", None),
              "loss_weight": self.loss_weight}
    defaults = {**decl.hyperparameters, "reduction": decl.default_reduction,
                "loss_weight": 1.0}
    return config_repr(decl.name, values, defaults)
