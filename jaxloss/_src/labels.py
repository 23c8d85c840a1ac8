"""Integer class labels in one canonical dtype.

Labels of any integer dtype (uint8, int8, int16, int64) mean the same classes:
every label-taking function compares them as ``int32`` (``int64`` under
``jax_enable_x64``), never in their own dtype, where ``num_classes = 300``
wraps to 44 in ``uint8`` and ``ignore_index = -100`` becomes 156.
"""

from __future__ import annotations

from typing import Any, overload

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_class_weight, check_num_classes
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import broadcast_mask, combine_masks, fill_masked
from jaxloss._src.tracing import is_tracer
from jaxloss._src.typing import Array, ArrayLike

__all__ = ["canonical_labels", "check_labels", "class_labels", "class_vector",
           "float_indices_error", "integer_labels_or_targets", "is_integer", "label_dtype",
           "one_hot", "safe_labels", "sigmoid_inputs", "sigmoid_targets", "valid_labels"]


def label_dtype():
  """``int32``, or ``int64`` under ``jax_enable_x64``: the dtype labels are compared in."""
  return jnp.dtype(jnp.int64) if jax.config.read("jax_enable_x64") else jnp.dtype(jnp.int32)


def is_integer(x) -> bool:
  """Whether ``x`` has an integer (signed or unsigned) dtype."""
  return bool(jnp.issubdtype(jnp.result_type(x), jnp.integer))


def canonical_labels(labels, name: str = "labels") -> Array:
  """``labels`` as :func:`label_dtype` integers.

  Raises:
    TypeError: ``labels`` is not of an integer dtype (float class indices are
      ambiguous with probabilities: cast them with ``.astype(jnp.int32)``).
  """
  labels = jnp.asarray(labels)
  if not is_integer(labels):
    raise TypeError(f"`{name}` must hold integer class labels, got dtype {labels.dtype}; "
                    f"cast class indices with `.astype(jnp.int32)`.")
  return labels.astype(label_dtype())


def check_labels(labels, num_classes: int, *, ignore_index: int | None = None) -> None:
  """Checks that every label is a class in ``[0, num_classes)`` or ``ignore_index``.

  Inside ``jit`` nothing can raise, so the losses read an out-of-range label
  as background (sigmoid losses) or drop it (softmax losses). While
  debugging, call this eagerly (it raises ``ValueError``) or inside a function
  wrapped by ``jax.experimental.checkify.checkify`` (a user check: the error
  comes back from ``err.throw()``)::

    def step(logits, labels):
      jaxloss.check_labels(labels, num_classes=21, ignore_index=255)
      return jaxloss.cross_entropy(logits, labels, ignore_index=255)

    err, loss = jax.jit(checkify.checkify(step))(logits, labels)
    err.throw()

  Args:
    labels: integer labels of any shape and integer dtype.
    num_classes: ``C``, a positive Python int.
    ignore_index: a label value that is allowed besides the classes, or ``None``.

  Raises:
    TypeError: ``labels`` is not of an integer dtype, or ``num_classes`` is not
      an int.
    ValueError: ``num_classes < 1``; or, when called eagerly, a label outside
      the classes (the message gives the first one).
  """
  check_num_classes(num_classes)
  labels = canonical_labels(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if ignore_index is not None:
    bad = bad & (labels != ignore_index)
  allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or {ignore_index}")
  if is_tracer(labels):
    from jax.experimental import checkify
    checkify.check(~jnp.any(bad), f"labels must be in {allowed}; found {{}} outside it",
                   jnp.sum(bad))
    return
  if bool(jnp.any(bad)):
    first = labels.reshape(-1)[jnp.argmax(bad.reshape(-1))]
    raise ValueError(f"labels must be in {allowed}; found {int(jnp.sum(bad))} outside it, "
                     f"e.g. {int(first)}.")

def one_hot(labels: ArrayLike, num_classes: int, dtype: Any = jnp.float32) -> Array:
  """One-hot encodes integer labels, with background rows for other values.

  Args:
    labels: integer labels ``[...]`` (any integer dtype).
    num_classes: ``C``.
    dtype: dtype of the result.

  Returns:
    ``[..., C]``: row ``l`` is the ``l``-th unit vector for ``0 <= l < C`` and
    all zeros for any other value (``-1``, ``C``, an ignore value such as 255).
    Computed by comparison, so no label ever indexes out of range.
  """
  labels = canonical_labels(labels)
  classes = jax.lax.broadcasted_iota(labels.dtype, (*labels.shape, num_classes), labels.ndim)
  return (labels[..., None] == classes).astype(dtype)


def valid_labels(labels: ArrayLike, ignore_index: int | None = None,
                  num_classes: int | None = None) -> Array | None:
  """Mask of the labels that count.

  Args:
    labels: integer labels ``[...]`` (any integer dtype: compared canonically),
      or float binary targets (``lovasz_hinge_loss``), compared as they are.
    ignore_index: a label value that removes its element (as ``where=False``),
      or ``None``.
    num_classes: when given, labels outside ``[0, num_classes)`` are removed too
      (softmax losses, where such a label has no meaning).

  Returns:
    boolean ``[...]``, or ``None`` when nothing can be invalid.
  """
  labels = canonical_labels(labels) if is_integer(labels) else jnp.asarray(labels)
  valid = None
  if ignore_index is not None:
    valid = labels != ignore_index
  if num_classes is not None:
    valid = combine_masks(valid, (labels >= 0) & (labels < num_classes))
  return valid


def safe_labels(labels: ArrayLike, valid: Array | None) -> Array:
  """Labels with invalid entries replaced by class 0, safe to gather with."""
  labels = canonical_labels(labels)
  return labels if valid is None else jnp.where(valid, labels, 0)


def class_labels(labels: ArrayLike, logits: Array, what: str) -> Array:
  """Canonical integer labels of the logits' shape without the class axis."""
  labels = jnp.asarray(labels)
  if not is_integer(labels):
    if labels.shape == logits.shape[:-1]:
      raise float_indices_error("labels", labels, logits)
    raise TypeError(f"{what} takes integer labels, got dtype {labels.dtype}; cast class "
                    f"indices with `.astype(jnp.int32)`.")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"{what} takes integer labels of shape {logits.shape[:-1]} (the logits' "
                     f"shape without the class axis), got {labels.shape}.")
  return canonical_labels(labels)


def sigmoid_targets(targets: ArrayLike, num_classes: int) -> Array:
  """Float targets ``[..., C]`` from integer labels ``[...]`` for a sigmoid loss.

  One-hot with background rows (:func:`one_hot`), except for
  a single channel (``C == 1``), where they are binary targets, 1 =
  foreground (MONAI, smp binary mode).
  """
  targets = canonical_labels(targets)
  if num_classes == 1:
    return (targets[..., None] == 1).astype(jnp.float32)
  return one_hot(targets, num_classes)


def integer_labels_or_targets(logits: Array, targets: ArrayLike) -> Array:
  """The targets of a sigmoid loss, read by rank and dtype (the docs' conventions page).

  * integer, the logits' shape without the class axis: class labels;
  * integer, the logits' shape: binary (multi-hot) 0/1 targets;
  * float (or bool), the logits' rank: targets that broadcast to the logits.

  Anything else is ambiguous (integer labels ``[N, 1]`` for ``C > 1``, float
  class indices ``[N]``) and raises ``ValueError``.
  """
  targets = jnp.asarray(targets)
  if is_integer(targets):
    if targets.shape == logits.shape[:-1]:
      return sigmoid_targets(targets, logits.shape[-1])
    if targets.shape == logits.shape:
      return as_float(targets)
    raise ValueError(
        f"integer targets of shape {targets.shape} for logits {logits.shape}: pass class "
        f"labels of shape {logits.shape[:-1]} (e.g. `labels[..., 0]` for labels [N, 1]) or 0/1 "
        f"targets of the logits' shape.")
  if targets.shape == logits.shape[:-1] and logits.shape[-1] > 1:
    raise float_indices_error("targets", targets, logits)
  if targets.ndim != logits.ndim or _broadcast(logits.shape, targets.shape) != logits.shape:
    raise ValueError(
        f"float targets of shape {targets.shape} for logits {logits.shape}: float targets must "
        f"have the logits' rank and broadcast to their shape; pass class indices as integer "
        f"labels [...] (`.astype(jnp.int32)`).")
  return as_float(targets)


def float_indices_error(name: str, labels: Array, logits: Array) -> TypeError:
  """The ``TypeError`` of float labels ``[...]`` (class indices in a float array) for logits
  ``[..., C]``: the same mistake raises the same error in every loss."""
  return TypeError(
      f"`{name}` of shape {labels.shape} for logits {logits.shape} has float dtype "
      f"{labels.dtype}: class labels must be integers; cast class indices with "
      f"`.astype(jnp.int32)` (float targets have the logits' shape [..., C]).")


def _broadcast(*shapes) -> tuple[int, ...] | None:
  try:
    return tuple(int(n) for n in jnp.broadcast_shapes(*shapes))
  except ValueError:
    return None


def sigmoid_inputs(logits: ArrayLike, targets: ArrayLike,
                   where: ArrayLike | None) -> tuple[Array, Array, Array | None]:
  """Logits and float targets of one shape, masked entries filled harmlessly."""
  logits = as_float(logits)
  targets = integer_labels_or_targets(logits, targets)
  shape = logits.shape
  mask = broadcast_mask(where, shape)
  logits = fill_masked(logits, mask)
  targets = fill_masked(jnp.broadcast_to(targets, shape), mask)
  return logits, targets, mask


@overload
def class_vector(value: None, num_classes: int, name: str, scalar: bool = False) -> None: ...


@overload
def class_vector(value: ArrayLike, num_classes: int, name: str, scalar: bool = False) -> Array: ...


def class_vector(value: ArrayLike | None, num_classes: int, name: str,
                  scalar: bool = False) -> Array | None:
  """``value`` as a float ``[C]`` per-class vector (or a scalar when allowed)."""
  if value is None:
    return None
  check_class_weight(value, name)
  value = as_float(value)
  if (value.ndim == 0 and scalar) or value.shape == (num_classes,):
    return value
  raise ValueError(
      f"`{name}` must have one entry per class, shape ({num_classes},)"
      f"{' or a scalar' if scalar else ''}, got shape {value.shape}.")
