r"""Cross entropy: sigmoid (binary) and softmax, with class weights and label smoothing.

Layout is channels-last: the class axis of ``logits`` is the last axis. Integer labels of
any integer dtype mean the same classes (:mod:`jaxloss._src.labels`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src import kernels
from jaxloss._src.checks import check_broadcast, check_classes, check_smoothing, common_shape
from jaxloss._src.labels import (
    canonical_labels,
    class_vector,
    float_indices_error,
    is_integer,
    safe_labels,
    sigmoid_inputs,
    valid_labels,
)
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import broadcast_mask, combine_masks, fill_masked, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction

__all__ = ["binary_cross_entropy", "cross_entropy", "sigmoid_bce"]


def sigmoid_bce(logits: Array, targets: Array, pos_weight: ArrayLike | None = None) -> Array:
  """Per-element ``-(w_p t log s(x) + (1 - t) log(1 - s(x)))`` in log-sigmoid form."""
  return kernels.binary_cross_entropy(
      logits, targets, None if pos_weight is None else as_float(pos_weight))


def _softmax_cross_entropy(logits: Array, labels: Array, class_weight: ArrayLike | None,
                           label_smoothing: float,
                           where: Array | None = None) -> tuple[Array, Array | None]:
  """Per-element softmax CE of integer labels, torch's class-weight/smoothing form.

  ``where`` (``[...]``) fills masked rows of ``logits`` inside the kernel (as
  :func:`fill_masked`, without storing a filled copy). Returns the loss
  ``[...]`` and the class weight of each label (``None`` without
  ``class_weight``), which is what ``"mean"`` divides by.
  """
  w_label = None
  if class_weight is not None:
    class_weight = as_float(class_weight)
    w_label = class_weight[labels]
  loss = kernels.softmax_cross_entropy(logits, labels, class_weight=class_weight,
                                      label_smoothing=label_smoothing, where=where)
  return loss, w_label


def _soft_cross_entropy(logits: Array, probs: Array, class_weight: ArrayLike | None,
                        label_smoothing: float) -> Array:
  """Per-element ``-sum_c w_c t'_c log softmax(x)_c`` with ``t' = (1 - e) t + e / C``."""
  if label_smoothing:
    probs = probs * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  if class_weight is not None:
    logp = logp * jnp.broadcast_to(as_float(class_weight), logp.shape)
  return -jnp.sum(probs * logp, axis=-1)


def binary_cross_entropy(logits: ArrayLike, targets: ArrayLike, *,
                         pos_weight: ArrayLike | None = None, label_smoothing: float = 0.0,
                         weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                         axis_name=None) -> Array:
  r"""Binary cross entropy with logits (sigmoid per class).

  .. math::
     \ell(x, t) = -\left[w_p\, t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))\right]

  computed as :math:`(\max(x, 0) - t x) + \log(1 + e^{-|x|})` (finite for any
  logit, and without the cancellation of :math:`\mathrm{softplus}(x) - t x`
  at confident logits); as
  ``torch.nn.functional.binary_cross_entropy_with_logits`` and
  ``optax.sigmoid_binary_cross_entropy``. ``label_smoothing`` ``e`` replaces
  ``t`` by ``(1 - e) t + e / 2`` (Keras' convention).

  Args:
    logits: ``[..., C]``.
    targets: read by rank and dtype: integer labels ``[...]`` (labels in
      ``[0, C)`` are classes, others background, an all-zero row; with
      ``C == 1`` binary targets, 1 = foreground); integer 0/1 targets of the
      logits' shape; or float targets (binary or soft) of the logits' rank,
      broadcastable to them. Anything else raises: float class indices
      ``[N]`` ``TypeError``, another shape (integer labels ``[N, 1]`` for
      ``C > 1``) ``ValueError``.
    pos_weight: weight of the positive term, broadcast on the class axis
      (``[C]``), as torch's ``pos_weight``; a shape that does not broadcast to
      the logits raises ``ValueError``.
    label_smoothing: ``e`` in ``[0, 1]``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[..., C]`` for ``reduction="none"``, else a scalar.
  """
  check_smoothing(label_smoothing)
  logits, targets, mask = sigmoid_inputs(logits, targets, where)
  if pos_weight is not None:
    check_broadcast("pos_weight", jnp.shape(pos_weight), logits.shape, "the logits' shape",
                    f" Pass one weight per class, shape ({logits.shape[-1]},), or a scalar.")
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
  loss = sigmoid_bce(logits, targets, pos_weight)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def cross_entropy(logits: ArrayLike, labels: ArrayLike, *,
                  class_weight: ArrayLike | None = None, ignore_index: int | None = None,
                  label_smoothing: float = 0.0, weight=None, where=None,
                  reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Softmax cross entropy, as ``torch.nn.functional.cross_entropy``.

  The dtype of ``labels`` decides their meaning: an integer dtype means class
  labels ``[...]`` (of any integer dtype), a float dtype class probabilities
  ``[..., C]`` of the logits' rank (float labels ``[...]``, i.e. class
  indices in a float array, raise ``TypeError``). With
  :math:`\log p = \mathrm{log\_softmax}(x)`, class weights :math:`w` (1 when
  absent) and smoothing :math:`\epsilon`:

  * integer labels :math:`y`:
    :math:`\ell = -(1 - \epsilon) w_y \log p_y - \frac{\epsilon}{C} \sum_c w_c \log p_c`,
    and ``"mean"`` divides the sum by :math:`\sum w_{y_i}` over the counted
    elements (by their number without ``class_weight``);
  * probabilities :math:`t`: :math:`\ell = -\sum_c w_c t'_c \log p_c` with
    :math:`t' = (1 - \epsilon) t + \epsilon / C`; ``"mean"`` divides by the
    number of counted elements.

  Labels equal to ``ignore_index`` are removed as ``where=False`` would (zero
  value and gradient, not counted). Labels outside ``[0, C)`` are removed in
  the same way (torch raises on them); they never index out of range.
  ``ignore_index`` does not apply to probability targets (as torch).

  Args:
    logits: ``[..., C]``.
    labels: integer ``[...]`` or float ``[..., C]``.
    class_weight: ``[C]`` weight of each class (another length raises
      ``ValueError``); differentiable.
    ignore_index: label value to ignore (e.g. ``255`` or ``-100``).
    label_smoothing: ``e`` in ``[0, 1]``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`;
      ``weight`` and ``where`` have the shape ``[...]`` of the per-element loss.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  check_smoothing(label_smoothing)
  logits = as_float(logits)
  num_classes = check_classes(logits, "cross_entropy")
  class_weight = class_vector(class_weight, num_classes, "class_weight")
  labels = jnp.asarray(labels)
  if not is_integer(labels):
    return _cross_entropy_probs(logits, labels, class_weight, label_smoothing, weight, where,
                                reduction, avg_factor, axis_name)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"integer labels must have the logits' shape without the class axis, "
        f"{logits.shape[:-1]}, got {labels.shape}; pass float probabilities "
        f"[..., C] for soft targets.")
  labels = canonical_labels(labels)
  mask = combine_masks(broadcast_mask(where, labels.shape),
                       valid_labels(labels, ignore_index, num_classes))
  loss, w_label = _softmax_cross_entropy(logits, safe_labels(labels, mask), class_weight,
                                         label_smoothing, mask)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name, count_weight=w_label)


def _cross_entropy_probs(logits, probs, class_weight, label_smoothing, weight, where, reduction,
                         avg_factor, axis_name):
  probs = as_float(probs)
  if probs.shape == logits.shape[:-1]:
    raise float_indices_error("labels", probs, logits)
  if probs.ndim != logits.ndim or probs.shape[-1:] != logits.shape[-1:]:
    raise ValueError(
        f"float labels of shape {probs.shape} for logits {logits.shape}: probability targets "
        f"must have the logits' rank and class axis ({logits.shape[-1]}); pass class indices "
        f"as integer labels [...] (`.astype(jnp.int32)`).")
  shape = common_shape(("logits", "labels"), (logits.shape, probs.shape),
                       " Probability targets [..., C] need the logits' leading shape.")
  mask = broadcast_mask(where, shape[:-1])
  logits = fill_masked(jnp.broadcast_to(logits, shape), mask)
  probs = fill_masked(jnp.broadcast_to(probs, shape), mask)
  loss = _soft_cross_entropy(logits, probs, class_weight, label_smoothing)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)
