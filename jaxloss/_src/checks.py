"""Checks at trace time: ``ValueError`` (wrong value or shape) or ``TypeError`` (wrong type)
naming the argument and the fix.

Only Python and NumPy values and static shapes are checked; a traced value cannot raise
inside ``jit``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from jax.core import Tracer

__all__ = ["REDUCTIONS", "check_array", "check_broadcast", "check_choice", "check_class_weight",
           "check_classes", "check_gamma", "check_num_classes", "check_range", "check_reduction",
           "check_smoothing", "check_static", "class_weight_hint", "common_shape",
           "focal_alpha"]

REDUCTIONS = ("none", "mean", "sum")


def check_choice(what: str, value: Any, choices: tuple, hint: str = "") -> None:
  """Raises ``ValueError`` naming the valid ``choices`` unless ``value`` is one of them."""
  if not (value is None or isinstance(value, str)) or value not in choices:
    raise ValueError(f"{what} must be one of {choices}, got {value!r}.{hint}")


def check_range(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False, hint: str = "") -> None:
  """Raises ``ValueError`` unless a number ``value`` lies in its interval (bounds inclusive
  unless ``*_open``). Only Python and NumPy numbers are checked: a traced hyper-parameter
  cannot raise inside ``jit`` and passes. NaN is outside every interval.
  """
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    return
  number = float(value)
  above = number > low if low_open else number >= low
  below = number < high if high_open else number <= high
  if not (above and below):
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    interval = interval.replace("[-inf", "(-inf").replace("inf]", "inf)")
    raise ValueError(f"`{name}` must be in {interval}, got {value!r}.{hint}")


def check_reduction(reduction: str) -> None:
  """Raises ``ValueError`` unless ``reduction`` is one of :data:`REDUCTIONS`."""
  check_choice("reduction", reduction, REDUCTIONS)


def check_static(name: str, value: Any, why: str = "it selects the computation") -> None:
  """``TypeError`` if a hyper-parameter that must be known at trace time is traced.

  Such a value picks code paths (an integer power, whether a term exists), which a traced
  value inside ``jit`` cannot do; the message names the fix.
  """
  if isinstance(value, Tracer):
    raise TypeError(
        f"`{name}` must be a Python number ({why}), got a traced value; pass it as a static "
        f"argument: close over it, or use jax.jit(..., static_argnames=...) / "
        f"functools.partial.")


def check_smoothing(label_smoothing: float) -> None:
  """``ValueError`` unless ``label_smoothing`` is in [0, 1] (``TypeError`` if traced)."""
  check_static("label_smoothing", label_smoothing, "zero smoothing skips a term")
  check_range("label_smoothing", label_smoothing, 0.0, 1.0)


def check_classes(logits: Any, what: str, minimum: int = 1) -> int:
  """The size of the class (last) axis of ``logits``; ``ValueError`` if below ``minimum``."""
  if logits.ndim < 1 or logits.shape[-1] < minimum:
    raise ValueError(
        f"{what} needs logits with a last (class) axis of size >= {minimum}, "
        f"got shape {logits.shape}.")
  return logits.shape[-1]


def check_gamma(gamma: float, name: str = "gamma") -> None:
  """``ValueError`` unless a focusing exponent is ``>= 0`` (``TypeError`` if traced: an
  integer exponent is computed by multiplications)."""
  check_static(name, gamma, "an integer exponent is computed by multiplications")
  check_range(name, gamma, 0.0)


def focal_alpha(alpha: float | None, name: str = "alpha") -> float | None:
  """The ``alpha`` of a sigmoid focal loss: ``None`` or torchvision's ``-1`` disable it
  (``None`` is returned); otherwise it must be in [0, 1]."""
  check_static(name, alpha, "None or -1 removes the term")
  if alpha is None or (isinstance(alpha, numbers.Real) and alpha == -1):
    return None
  check_range(name, alpha, 0.0, 1.0,
              hint=f" Pass {name}=None (or torchvision's -1) to disable it.")
  return alpha if not isinstance(alpha, numbers.Real) else float(alpha)


def check_num_classes(num_classes: Any, name: str = "num_classes") -> None:
  """``TypeError`` unless ``num_classes`` is a Python int, ``ValueError`` unless ``>= 1``."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
    raise TypeError(f"`{name}` must be a Python int (it sets static shapes), got "
                    f"{type(num_classes).__name__} {num_classes!r}.")
  if num_classes < 1:
    raise ValueError(f"`{name}` must be >= 1, got {num_classes}.")


def check_array(name: str, value: Any, hint: str = "") -> None:
  """``TypeError`` if an array argument is given as a string (e.g. a method's name)."""
  if isinstance(value, str):
    raise TypeError(f"`{name}` must be an array, got the string {value!r}.{hint}")


def class_weight_hint(name: str = "class_weight") -> str:
  """How to pass per-class weights computed from label frequencies."""
  return (f" Compute the weights from the labels and pass them: "
          f"`{name}=jaxloss.class_weights(labels, num_classes, method=...)` (method "
          f"'inverse', 'inverse_sqrt', 'median' or 'effective').")


def check_class_weight(value: Any, name: str = "class_weight") -> None:
  """``TypeError`` naming :func:`jaxloss.class_weights` if per-class weights are a string
  (``class_weight="median"``, a method of ``class_weights``, not a weight)."""
  check_array(name, value, class_weight_hint(name))


def common_shape(names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...],
                 hint: str = "", *, drop: int = 0) -> tuple[int, ...]:
  """The broadcast shape of arguments ``names`` of ``shapes`` without their last ``drop``
  axes (e.g. the box axis); ``ValueError`` naming them and their shapes if those do not
  broadcast together."""
  try:
    return tuple(int(n) for n in np.broadcast_shapes(*(s[:len(s) - drop] for s in shapes)))
  except ValueError:
    given = ", ".join(f"`{n}` {tuple(s)}" for n, s in zip(names, shapes, strict=True))
    raise ValueError(f"shapes do not broadcast together: {given}.{hint}") from None


def check_broadcast(name: str, shape: tuple[int, ...], to: tuple[int, ...], what: str,
                    hint: str = "") -> None:
  """``ValueError`` unless ``name`` of ``shape`` broadcasts to ``to`` (``what``'s shape)."""
  try:
    fits = tuple(np.broadcast_shapes(tuple(shape), tuple(to))) == tuple(to)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(
        f"`{name}` of shape {tuple(shape)} does not broadcast to {what} {tuple(to)}.{hint}")


def check_targets_mask(gt_labels: Any, gt_mask: Any, expected: tuple[int, ...]) -> None:
  """Padded ground truth: ``gt_labels`` and ``gt_mask`` are ``[B, M]`` (``expected``, the
  boxes' or masks' leading shape) and ``gt_mask`` is boolean."""
  if gt_labels.shape != expected or gt_mask.shape != expected:
    raise ValueError(f"`gt_labels` {gt_labels.shape} and `gt_mask` {gt_mask.shape} must be "
                     f"[B, M] = {expected}, matching the padded ground truth.")
  if str(gt_mask.dtype) != "bool":
    raise TypeError(f"`gt_mask` must be boolean (True = a real target, False = padding), got "
                    f"{gt_mask.dtype}; pass e.g. `gt_mask=gt_labels >= 0`.")
