r"""Classification losses: cross entropy (sigmoid and softmax), the focal family
(sigmoid, softmax, quality, varifocal, distribution, gaussian).

Layout is channels-last: the class axis of ``logits`` is the last axis.
Losses over independent sigmoid outputs keep the shape ``[..., C]``; losses
that consume the class (or bin) axis return ``[...]``.

Integer labels (DESIGN.md section 1) are handled by two helpers that the
segmentation and dense-detection modules reuse:

* :func:`_one_hot_or_background`: labels in ``[0, C)`` are classes, any other
  value (``-1``, ``C``, ``255``) an all-zero background row. Never indexes.
* :func:`_valid_labels`: the mask of labels that count, i.e. not equal to
  ``ignore_index`` (and in ``[0, C)`` for softmax losses); invalid elements are
  removed exactly as ``where=False``.

:func:`_sigmoid_targets` adds the single-channel rule of DESIGN.md: with
``C == 1`` integer labels are binary targets (1 = foreground).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxloss import _fused
from jaxloss._reduce import (
    Array,
    ArrayLike,
    as_float,
    broadcast_mask,
    combine_masks,
    fill_masked,
    reduce_loss,
    reduce_total,
)
from jaxloss._src.labels import canonical_labels, is_integer

# --------------------------------------------------------------------------
# label helpers (shared with segmentation and FCOS)


def _is_integer(x: ArrayLike) -> bool:
  return is_integer(x)


def _one_hot_or_background(labels: ArrayLike, num_classes: int,
                           dtype: Any = jnp.float32) -> Array:
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
  return (labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)).astype(dtype)


def _valid_labels(labels: ArrayLike, ignore_index: int | None = None,
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


def _safe_labels(labels: ArrayLike, valid: Array | None) -> Array:
  """Labels with invalid entries replaced by class 0, safe to gather with."""
  labels = canonical_labels(labels)
  return labels if valid is None else jnp.where(valid, labels, 0)


def _class_labels(labels: ArrayLike, logits: Array, what: str) -> Array:
  """Canonical integer labels of the logits' shape without the class axis."""
  labels = jnp.asarray(labels)
  if not is_integer(labels):
    raise TypeError(f"{what} takes integer labels, got dtype {labels.dtype}; cast class "
                    f"indices with `.astype(jnp.int32)`.")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"{what} takes integer labels of shape {logits.shape[:-1]} (the logits' "
                     f"shape without the class axis), got {labels.shape}.")
  return canonical_labels(labels)


def _sigmoid_targets(targets: ArrayLike, num_classes: int) -> Array:
  """Float targets ``[..., C]`` from integer labels ``[...]`` for a sigmoid loss.

  One-hot with background rows (:func:`_one_hot_or_background`), except for
  a single channel (``C == 1``), where they are binary targets, 1 =
  foreground (MONAI, smp binary mode).
  """
  targets = canonical_labels(targets)
  if num_classes == 1:
    return (targets[..., None] == 1).astype(jnp.float32)
  return _one_hot_or_background(targets, num_classes)


def _integer_labels_or_targets(logits: Array, targets: ArrayLike) -> Array:
  """The targets of a sigmoid loss, read by rank and dtype (DESIGN.md section 1).

  * integer, the logits' shape without the class axis: class labels;
  * integer, the logits' shape: binary (multi-hot) 0/1 targets;
  * float (or bool), the logits' rank: targets that broadcast to the logits.

  Anything else is ambiguous (integer labels ``[N, 1]`` for ``C > 1``, float
  class indices ``[N]``) and raises ``ValueError``.
  """
  targets = jnp.asarray(targets)
  if is_integer(targets):
    if targets.shape == logits.shape[:-1]:
      return _sigmoid_targets(targets, logits.shape[-1])
    if targets.shape == logits.shape:
      return as_float(targets)
    raise ValueError(
        f"integer targets of shape {targets.shape} for logits {logits.shape}: pass class "
        f"labels of shape {logits.shape[:-1]} (e.g. `labels[..., 0]` for labels [N, 1]) or 0/1 "
        f"targets of the logits' shape.")
  if targets.ndim != logits.ndim or _broadcast(logits.shape, targets.shape) != logits.shape:
    raise ValueError(
        f"float targets of shape {targets.shape} for logits {logits.shape}: float targets must "
        f"have the logits' rank and broadcast to their shape; pass class indices as integer "
        f"labels [...] (`.astype(jnp.int32)`).")
  return as_float(targets)


def _broadcast(*shapes) -> tuple[int, ...] | None:
  try:
    return jnp.broadcast_shapes(*shapes)
  except ValueError:
    return None


def _sigmoid_inputs(logits: ArrayLike, targets: ArrayLike, where: ArrayLike | None):
  """Logits and float targets of one shape, masked entries filled harmlessly."""
  logits = as_float(logits)
  targets = _integer_labels_or_targets(logits, targets)
  shape = logits.shape
  mask = broadcast_mask(where, shape)
  logits = fill_masked(logits, mask)
  targets = fill_masked(jnp.broadcast_to(targets, shape), mask)
  return logits, targets, mask


def _check_number(name: str, value: Any, low: float, high: float | None = None, *,
                  low_open: bool = False, note: str = "") -> None:
  """``ValueError`` if a Python-number hyper-parameter is outside its range.

  Traced or array values are not checked (nothing can raise inside ``jit``).
  """
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    return
  above = value > low if low_open else value >= low
  if not (above and (high is None or value <= high)):
    lo = f"({low}" if low_open else f"[{low}"
    hi = "inf)" if high is None else f"{high}]"
    raise ValueError(f"`{name}` must be in {lo}, {hi}, got {value}.{note}")


def _class_vector(value: ArrayLike | None, num_classes: int, name: str,
                  scalar: bool = False) -> Array | None:
  """``value`` as a float ``[C]`` per-class vector (or a scalar when allowed)."""
  if value is None:
    return None
  value = as_float(value)
  if (value.ndim == 0 and scalar) or value.shape == (num_classes,):
    return value
  raise ValueError(
      f"`{name}` must have one entry per class, shape ({num_classes},)"
      f"{' or a scalar' if scalar else ''}, got shape {value.shape}.")


def _safe_pow(x: Array, p: float) -> Array:
  """``x ** p`` for ``x >= 0``, with a zero (not inf/NaN) gradient at 0 when ``p < 1``."""
  if p == 0:
    return jnp.ones_like(x)
  if p == 1:
    return x
  if p > 1:
    return jnp.power(x, p)
  positive = x > 0
  return jnp.where(positive, jnp.power(jnp.where(positive, x, 1.0), p), 0.0)


def _check_smoothing(label_smoothing: float) -> None:
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing}.")


def _check_classes(logits: Array, what: str, minimum: int = 1) -> int:
  if logits.ndim < 1 or logits.shape[-1] < minimum:
    raise ValueError(
        f"{what} needs logits with a last (class) axis of size >= {minimum}, "
        f"got shape {logits.shape}.")
  return logits.shape[-1]


# --------------------------------------------------------------------------
# per-element math: the one-pass kernels of jaxloss._fused (analytic
# gradients; plain autodiff inside ``jaxloss.fused_kernels(False)``)


def _sigmoid_bce(logits: Array, targets: Array, pos_weight: ArrayLike | None = None) -> Array:
  """Per-element ``-(w_p t log s(x) + (1 - t) log(1 - s(x)))`` in log-sigmoid form."""
  return _fused.binary_cross_entropy(
      logits, targets, None if pos_weight is None else as_float(pos_weight))


def _sigmoid_focal(logits: Array, targets: Array, alpha: float | None, gamma: float) -> Array:
  """Per-element torchvision focal loss ``a_t (1 - p_t)^gamma BCE(x, t)``.

  ``targets`` are float ``[..., C]``, or integer labels ``[...]`` that the
  kernel one-hot encodes on the fly (no ``[..., C]`` target array).
  """
  return _fused.sigmoid_focal(logits, targets, alpha=alpha, gamma=gamma)


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
  loss = _fused.softmax_cross_entropy(logits, labels, class_weight=class_weight,
                                      label_smoothing=label_smoothing, where=where)
  return loss, w_label


def _soft_cross_entropy(logits: Array, probs: Array, class_weight: ArrayLike | None,
                        label_smoothing: float) -> Array:
  """Per-element ``-sum_c w_c t'_c log softmax(x)_c`` with ``t' = (1 - e) t + e / C``."""
  if label_smoothing:
    probs = probs * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  if class_weight is not None:
    logp = logp * as_float(class_weight)
  return -jnp.sum(probs * logp, axis=-1)


# --------------------------------------------------------------------------
# public losses


def binary_cross_entropy(logits: ArrayLike, targets: ArrayLike, *,
                         pos_weight: ArrayLike | None = None, label_smoothing: float = 0.0,
                         weight=None, where=None, reduction: str = "mean", avg_factor=None,
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
      broadcastable to them. Anything else (integer labels ``[N, 1]`` for
      ``C > 1``, float class indices ``[N]``) raises ``ValueError``.
    pos_weight: weight of the positive term, broadcast on the class axis
      (``[C]``), as torch's ``pos_weight``.
    label_smoothing: ``e`` in ``[0, 1]``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[..., C]`` for ``reduction="none"``, else a scalar.
  """
  _check_smoothing(label_smoothing)
  logits, targets, mask = _sigmoid_inputs(logits, targets, where)
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
  loss = _sigmoid_bce(logits, targets, pos_weight)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def cross_entropy(logits: ArrayLike, labels: ArrayLike, *,
                  class_weight: ArrayLike | None = None, ignore_index: int | None = None,
                  label_smoothing: float = 0.0, weight=None, where=None,
                  reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Softmax cross entropy, as ``torch.nn.functional.cross_entropy``.

  The dtype of ``labels`` decides their meaning: an integer dtype means class
  labels ``[...]`` (of any integer dtype), a float dtype class probabilities
  ``[..., C]`` of the logits' rank (float labels ``[...]``, i.e. class
  indices in a float array, raise ``ValueError``). With
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
  _check_smoothing(label_smoothing)
  logits = as_float(logits)
  num_classes = _check_classes(logits, "cross_entropy")
  class_weight = _class_vector(class_weight, num_classes, "class_weight")
  labels = jnp.asarray(labels)
  if not _is_integer(labels):
    return _cross_entropy_probs(logits, labels, class_weight, label_smoothing, weight, where,
                                reduction, avg_factor, axis_name)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"integer labels must have the logits' shape without the class axis, "
        f"{logits.shape[:-1]}, got {labels.shape}; pass float probabilities "
        f"[..., C] for soft targets.")
  labels = canonical_labels(labels)
  mask = combine_masks(broadcast_mask(where, labels.shape),
                       _valid_labels(labels, ignore_index, num_classes))
  loss, w_label = _softmax_cross_entropy(logits, _safe_labels(labels, mask), class_weight,
                                         label_smoothing, mask)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name, count_weight=w_label)


def _cross_entropy_probs(logits, probs, class_weight, label_smoothing, weight, where, reduction,
                         avg_factor, axis_name):
  probs = as_float(probs)
  if probs.ndim != logits.ndim or probs.shape[-1:] != logits.shape[-1:]:
    raise ValueError(
        f"float labels of shape {probs.shape} for logits {logits.shape}: probability targets "
        f"must have the logits' rank and class axis ({logits.shape[-1]}); pass class indices "
        f"as integer labels [...] (`.astype(jnp.int32)`).")
  shape = jnp.broadcast_shapes(logits.shape, probs.shape)
  mask = broadcast_mask(where, shape[:-1])
  logits = fill_masked(jnp.broadcast_to(logits, shape), mask)
  probs = fill_masked(jnp.broadcast_to(probs, shape), mask)
  loss = _soft_cross_entropy(logits, probs, class_weight, label_smoothing)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def sigmoid_focal_loss(logits: ArrayLike, targets: ArrayLike, *, alpha: float | None = 0.25,
                       gamma: float = 2.0, weight=None, where=None, reduction: str = "mean",
                       avg_factor=None, axis_name=None) -> Array:
  r"""Sigmoid focal loss (Lin et al., Focal Loss for Dense Object Detection, 2017).

  .. math::
     \ell = \alpha_t (1 - p_t)^\gamma \, \mathrm{BCE}(x, t), \quad
     p_t = p t + (1 - p)(1 - t), \quad \alpha_t = \alpha t + (1 - \alpha)(1 - t)

  with :math:`p = \sigma(x)`; torchvision's ``sigmoid_focal_loss`` (soft
  targets allowed) and mmdetection's ``FocalLoss``. :math:`1 - p` is
  computed as :math:`\sigma(-x)` and the power has a finite gradient at 0 for
  any :math:`\gamma \ge 0`.

  Args:
    logits: ``[..., C]``.
    targets: as :func:`binary_cross_entropy`: integer labels ``[...]``
      (values outside ``[0, C)`` are background; with ``C == 1`` binary
      targets, 1 = foreground), integer 0/1 targets of the logits' shape, or
      float targets (binary or soft) of the logits' rank; anything else
      raises ``ValueError``.
    alpha: weight of the positives in ``[0, 1]``; ``None`` (or torchvision's
      ``-1``) disables it. Any other value raises ``ValueError``.
    gamma: focusing parameter ``>= 0``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[..., C]`` for ``reduction="none"``, else a scalar (``"mean"`` is over
    all ``[..., C]`` elements, as torchvision; pass ``avg_factor=num_pos`` for
    RetinaNet's normalisation).

  Example:
    >>> import jax.numpy as jnp, jaxloss
    >>> logits = jnp.array([[1.0, -2.0, 0.5], [-1.0, -1.0, -1.0]])
    >>> labels = jnp.array([2, 3])              # 3 == C: a background row
    >>> onehot = jnp.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    >>> bool(jnp.allclose(jaxloss.sigmoid_focal_loss(logits, labels),
    ...                   jaxloss.sigmoid_focal_loss(logits, onehot)))
    True
  """
  _check_gamma(gamma)
  alpha = _check_focal_alpha(alpha)
  logits, labels = as_float(logits), jnp.asarray(targets)
  if (_is_integer(labels) and labels.shape == logits.shape[:-1] and logits.shape[-1] > 1):
    labels = canonical_labels(labels)
    if weight is None and where is None and reduction != "none" and _fused.fused_enabled():
      total = _fused.sigmoid_focal_sum(logits, labels, alpha=alpha, gamma=gamma)
      return reduce_total(total, logits.size, reduction=reduction, avg_factor=avg_factor,
                          axis_name=axis_name)
    mask = broadcast_mask(where, logits.shape)
    logits, targets = fill_masked(logits, mask), labels
  else:
    logits, targets, mask = _sigmoid_inputs(logits, targets, where)
  loss = _sigmoid_focal(logits, targets, alpha, gamma)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def _check_gamma(gamma: float, name: str = "gamma") -> None:
  _check_number(name, gamma, 0.0)


def _check_focal_alpha(alpha: float | None) -> float | None:
  """``alpha`` of the sigmoid focal loss: ``None``, torchvision's ``-1`` (= ``None``) or [0, 1]."""
  if alpha is None or (isinstance(alpha, numbers.Real) and alpha == -1):
    return None
  _check_number("alpha", alpha, 0.0, 1.0,
                note=" Pass alpha=None (or torchvision's -1) to disable it.")
  return alpha


def softmax_focal_loss(logits: ArrayLike, labels: ArrayLike, *, gamma: float = 2.0,
                       alpha: float | ArrayLike | None = None, ignore_index: int | None = None,
                       weight=None, where=None, reduction: str = "mean", avg_factor=None,
                       axis_name=None) -> Array:
  r"""Multi-class (softmax) focal loss (Lin et al., 2017, section 3 generalised).

  .. math::
     \ell = -\alpha_y (1 - p_y)^\gamma \log p_y, \quad p = \mathrm{softmax}(x)

  with :math:`1 - p_y = -\mathrm{expm1}(\log p_y)`. ``gamma=0`` and
  ``alpha=None`` is :func:`cross_entropy`. Labels equal to ``ignore_index`` or
  outside ``[0, C)`` are removed as ``where=False``; ``"mean"`` divides by the
  number of counted elements (``alpha`` does not enter the divisor).

  Args:
    logits: ``[..., C]``.
    labels: integer labels ``[...]``.
    gamma: focusing parameter ``>= 0``.
    alpha: ``None``, a scalar ``>= 0``, or a per-class weight ``[C]``.
    ignore_index: label value to ignore.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  _check_gamma(gamma)
  _check_number("alpha", alpha, 0.0)
  logits = as_float(logits)
  num_classes = _check_classes(logits, "softmax_focal_loss")
  alpha = _class_vector(alpha, num_classes, "alpha", scalar=True)
  labels = _class_labels(labels, logits, "softmax_focal_loss")
  mask = combine_masks(broadcast_mask(where, labels.shape),
                       _valid_labels(labels, ignore_index, num_classes))
  labels = _safe_labels(labels, mask)
  logp = jax.nn.log_softmax(fill_masked(logits, mask), axis=-1)
  logp_y = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  loss = -_safe_pow(-jnp.expm1(logp_y), gamma) * logp_y
  if alpha is not None:
    loss = loss * (alpha if alpha.ndim == 0 else alpha[labels])
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def _quality_focal_elements(logits, labels, scores, beta, where):
  """Per-element QFL ``[..., C]`` and the per-sample mask ``[...]``."""
  _check_gamma(beta, "beta")
  logits = as_float(logits)
  num_classes = _check_classes(logits, "quality_focal_loss")
  labels = _class_labels(labels, logits, "quality_focal_loss")
  mask = broadcast_mask(where, labels.shape)
  logits = fill_masked(logits, mask)
  scores = fill_masked(jnp.broadcast_to(as_float(scores), labels.shape), mask)
  targets = _one_hot_or_background(labels, num_classes) * scores[..., None]
  modulator = _safe_pow(jnp.abs(targets - jax.nn.sigmoid(logits)), beta)
  return _sigmoid_bce(logits, targets) * modulator, mask


def quality_focal_loss(logits: ArrayLike, labels: ArrayLike, scores: ArrayLike, *,
                       beta: float = 2.0, weight=None, where=None, reduction: str = "mean",
                       avg_factor=None, axis_name=None) -> Array:
  r"""Quality focal loss (Li et al., Generalized Focal Loss, NeurIPS 2020).

  With the soft target :math:`y_c = s \cdot [c = \text{label}]` (IoU quality
  ``s`` on the labelled class, 0 elsewhere) and :math:`\sigma = \sigma(x_c)`:

  .. math::
     \ell_c = |y_c - \sigma|^\beta \, \mathrm{BCE}(x_c, y_c)

  (arXiv:2006.04388). Background labels (outside ``[0, C)``, e.g. ``C``) give
  all-zero targets, also for ``C == 1`` (label 0 is then the one class, as
  mmdetection's single-class heads). A loss over independent sigmoid
  logits, so it keeps ``[..., C]`` and ``"mean"`` divides by the number of
  counted ``[..., C]`` elements (DESIGN.md section 1, as
  :func:`sigmoid_focal_loss`); ``weight`` and ``where`` of shape ``[...]``
  apply per sample. mmdetection's per-sample sum over classes is the
  ``QualityFocalLoss`` registry / Flax loss.

  Args:
    logits: ``[..., C]``.
    labels: integer labels ``[...]``.
    scores: quality (IoU) targets ``[...]`` in ``[0, 1]``.
    beta: modulating exponent ``>= 0``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[..., C]`` for ``reduction="none"``, else a scalar.
  """
  loss, mask = _quality_focal_elements(logits, labels, scores, beta, where)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def _mmdet_quality_focal(logits: ArrayLike, labels: ArrayLike, scores: ArrayLike, *,
                         beta: float = 2.0, weight=None, where=None, reduction: str = "mean",
                         avg_factor=None, axis_name=None) -> Array:
  r"""mmdetection's ``quality_focal_loss``: :func:`quality_focal_loss` summed over
  classes, so per sample ``[...]``, composing with mmdetection's per-sample
  weights and ``avg_factor`` (``"mean"`` divides by the number of samples)."""
  loss, mask = _quality_focal_elements(logits, labels, scores, beta, where)
  return reduce_loss(jnp.sum(loss, axis=-1), weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def varifocal_loss(logits: ArrayLike, targets: ArrayLike, *, alpha: float = 0.75,
                   gamma: float = 2.0, iou_weighted: bool = True, weight=None, where=None,
                   reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Varifocal loss (Zhang et al., VarifocalNet, CVPR 2021).

  .. math::
     \ell = \mathrm{BCE}(x, q) \cdot \begin{cases}
        q \ (\text{or } 1 \text{ if not iou\_weighted}) & q > 0 \\
        \alpha\, |\sigma(x) - q|^\gamma & q \le 0 \end{cases}

  with the IoU-aware soft target :math:`q`; as mmdetection's ``varifocal_loss``.

  Args:
    logits: ``[..., C]``.
    targets: float IoU-aware targets ``[..., C]`` (IoU on the gt class, 0 elsewhere).
    alpha: weight of the negatives, ``>= 0``.
    gamma: modulating exponent of the negatives ``>= 0``.
    iou_weighted: weight positives by ``q`` (else by 1).
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[..., C]`` for ``reduction="none"``, else a scalar.
  """
  _check_gamma(gamma)
  _check_number("alpha", alpha, 0.0)
  if jnp.shape(targets) != jnp.shape(logits):
    raise ValueError(
        f"varifocal_loss needs soft IoU-aware targets of the logits' shape {jnp.shape(logits)}, "
        f"got {jnp.shape(targets)}; build them as one_hot(labels, C) * iou.")
  logits, targets, mask = _sigmoid_inputs(logits, as_float(targets), where)
  positive = targets > 0
  negative_weight = alpha * _safe_pow(jnp.abs(jax.nn.sigmoid(logits) - targets), gamma)
  focal_weight = jnp.where(positive, targets if iou_weighted else 1.0, negative_weight)
  loss = _sigmoid_bce(logits, targets) * focal_weight
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def distribution_focal_loss(logits: ArrayLike, targets: ArrayLike, *, weight=None, where=None,
                            reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Distribution focal loss (Li et al., Generalized Focal Loss, NeurIPS 2020).

  A continuous target :math:`y \in [0, n]` between bins :math:`y_l = \lfloor y \rfloor`
  and :math:`y_r = y_l + 1` gives

  .. math::
     \ell = -(y_r - y) \log p_{y_l} - (y - y_l) \log p_{y_r}, \quad p = \mathrm{softmax}(x)

  as mmdetection's ``distribution_focal_loss``. Targets are clipped to
  ``[0, n]``; ``y = n`` uses the bins ``n - 1, n`` (weight 1 on ``n``), so no
  bin index ever leaves ``[0, n]``.

  Args:
    logits: ``[..., n + 1]`` bin logits (``n >= 1``).
    targets: ``[...]`` continuous targets in ``[0, n]``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  logits = as_float(logits)
  n = _check_classes(logits, "distribution_focal_loss", minimum=2) - 1
  targets = as_float(targets)
  if targets.shape != logits.shape[:-1]:
    raise ValueError(
        f"distribution_focal_loss needs targets of shape {logits.shape[:-1]} "
        f"(logits without the bin axis), got {targets.shape}.")
  mask = broadcast_mask(where, targets.shape)
  logits = fill_masked(logits, mask)
  targets = jnp.clip(fill_masked(targets, mask), 0, n)
  left = jnp.clip(jnp.floor(targets), 0, n - 1)
  right = left + 1
  logp = jax.nn.log_softmax(logits, axis=-1)
  bins = jnp.stack([left, right], axis=-1).astype(jnp.int32)
  logp_lr = jnp.take_along_axis(logp, bins, axis=-1)
  loss = -((right - targets) * logp_lr[..., 0] + (targets - left) * logp_lr[..., 1])
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


GAUSSIAN_FOCAL_EPS = 1e-12


def gaussian_focal_loss(probs: ArrayLike, heatmap: ArrayLike, *, alpha: float = 2.0,
                        gamma: float = 4.0, pos_weight: float = 1.0, neg_weight: float = 1.0,
                        weight=None, where=None, reduction: str = "mean", avg_factor=None,
                        axis_name=None) -> Array:
  r"""Gaussian focal loss (CornerNet, Law & Deng 2018; CenterNet, Zhou et al. 2019).

  With predicted probabilities :math:`p` and a gaussian heatmap :math:`y`:

  .. math::
     \ell = -[y = 1] (1 - p)^\alpha \log \max(p, \varepsilon)
            - (1 - y)^\gamma p^\alpha \log \max(1 - p, \varepsilon)

  each term scaled by ``pos_weight`` / ``neg_weight``; mmdetection's
  ``gaussian_focal_loss`` with its :math:`\varepsilon = 10^{-12}`, clamped rather
  than added (identical in float32 except at the clamp), which keeps value and
  gradient finite at ``p`` exactly 0 or 1. Takes probabilities
  (apply ``sigmoid`` first, as mmdetection's heads do); ``"mean"`` is over all
  elements, CenterNet divides by the number of peaks via ``avg_factor``.

  Args:
    probs: ``[..., C]`` probabilities in ``[0, 1]``.
    heatmap: ``[..., C]`` gaussian targets in ``[0, 1]``, exactly 1 at peaks.
    alpha: exponent of the prediction term, ``>= 0``.
    gamma: exponent of the heatmap's negative-weight term, ``>= 0``.
    pos_weight, neg_weight: weights of the positive and negative terms, ``>= 0``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[..., C]`` for ``reduction="none"``, else a scalar.
  """
  _check_gamma(alpha, "alpha")
  _check_gamma(gamma)
  _check_number("pos_weight", pos_weight, 0.0)
  _check_number("neg_weight", neg_weight, 0.0)
  probs = as_float(probs)
  heatmap = as_float(heatmap)
  shape = jnp.broadcast_shapes(probs.shape, heatmap.shape)
  mask = broadcast_mask(where, shape)
  probs = fill_masked(jnp.broadcast_to(probs, shape), mask, 0.5)
  heatmap = fill_masked(jnp.broadcast_to(heatmap, shape), mask)
  # mmdetection adds eps inside the logs; under jit XLA folds (1 - p) + eps into
  # (1 + eps) - p == 1 - p in float32, so we clamp instead (same value to float32
  # precision, finite value and gradient at p == 0 and p == 1).
  log_p = jnp.log(jnp.maximum(probs, GAUSSIAN_FOCAL_EPS))
  log_not_p = jnp.log(jnp.maximum(1 - probs, GAUSSIAN_FOCAL_EPS))
  pos = -log_p * _safe_pow(1 - probs, alpha) * (heatmap == 1)
  neg = -log_not_p * _safe_pow(probs, alpha) * _safe_pow(1 - heatmap, gamma)
  loss = pos_weight * pos + neg_weight * neg
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


# --------------------------------------------------------------------------
# mmdetection config compatibility (registry rows)


def _accepting_use_sigmoid(fn: Callable[..., Array]) -> Callable[..., Array]:
  """``fn`` with mmdetection's ``use_sigmoid=True`` keyword (``False`` is refused),
  so that configs such as ``dict(type="FocalLoss", use_sigmoid=True)`` port unchanged."""

  def call(*inputs, use_sigmoid: bool = True, **kwargs):
    if not use_sigmoid:
      raise ValueError(f"{fn.__name__} is a sigmoid loss; use_sigmoid=False is not supported "
                       f"(use softmax_focal_loss / SoftmaxFocalLoss for a softmax focal loss).")
    return fn(*inputs, **kwargs)

  sig = inspect.signature(fn)
  params = list(sig.parameters.values())
  first_kw = next(i for i, p in enumerate(params) if p.kind is p.KEYWORD_ONLY)
  params.insert(first_kw, inspect.Parameter("use_sigmoid", inspect.Parameter.KEYWORD_ONLY,
                                            default=True))
  call.__signature__ = sig.replace(parameters=params)
  call.__name__ = call.__qualname__ = fn.__name__
  call.__doc__ = fn.__doc__
  return call


_mmdet_focal_loss = _accepting_use_sigmoid(sigmoid_focal_loss)
# Named after the function it sums, so that the Flax wrappers' docs link to it.
_mmdet_quality_focal.__name__ = _mmdet_quality_focal.__qualname__ = "quality_focal_loss"
_mmdet_quality_focal_loss = _accepting_use_sigmoid(_mmdet_quality_focal)
_mmdet_varifocal_loss = _accepting_use_sigmoid(varifocal_loss)


def _mmdet_cross_entropy(pred: ArrayLike, target: ArrayLike, label: ArrayLike | None = None, *,
                        use_sigmoid: bool = False, use_mask: bool = False,
                        avg_non_ignore: bool = False, class_weight: ArrayLike | None = None,
                        ignore_index: int | None = None, label_smoothing: float = 0.0,
                        weight=None, where=None, reduction: str = "mean", avg_factor=None,
                        axis_name=None) -> Array:
  r"""mmdetection's ``CrossEntropyLoss`` (``cross_entropy_loss.py``), channels-last.

  * default (softmax): ``F.cross_entropy(pred, label, weight=class_weight,
    reduction='none', ignore_index)`` per element, then ``"mean"`` divides by
    the number of elements (NOT by summed class weights, unlike
    :func:`cross_entropy`), ignored ones included unless ``avg_non_ignore``.
    ``ignore_index=None`` means ``-100``, as mmdetection.
  * ``use_sigmoid``: BCE with logits, ``class_weight`` as ``pos_weight``.
    Integer labels ``[...]`` (one rank short of ``pred``) are expanded as
    mmdetection's ``_expand_onehot_labels``: labels ``< 0`` or equal to
    ``ignore_index`` are ignored, other labels outside ``[0, C)`` are
    background rows; with ``C == 1`` label 0 is the foreground channel (RPN).
    Float targets of ``pred``'s shape ignore entries ``< 0`` or equal to
    ``ignore_index``. ``"mean"`` is over all ``[..., C]`` elements unless
    ``avg_non_ignore``.
  * ``use_mask`` (three inputs ``pred [N, H, W, C], target [N, H, W], label [N]``):
    BCE of the channel ``label`` of each RoI against the binary mask target,
    mean over ``N * H * W``; ``class_weight`` scales each RoI by
    ``class_weight[label]`` (mmdetection passes it to torch as an elementwise
    weight, which only broadcasts by accident). Returns a scalar, not ``[1]``.

  Ignored elements get zero value and gradient; ``where=False`` elements are
  also removed from the mean's divisor.
  """
  if use_sigmoid and use_mask:
    raise ValueError("CrossEntropyLoss takes use_sigmoid or use_mask, not both (as mmdetection).")
  if use_mask != (label is not None):
    raise TypeError("CrossEntropyLoss(use_mask=True) is called as loss(pred, target, label) "
                    "and otherwise as loss(pred, target).")
  ignore_index = -100 if ignore_index is None else ignore_index
  common = dict(reduction="none", weight=weight, where=where)
  if use_mask:
    return _mmdet_mask_cross_entropy(pred, target, label, class_weight, label_smoothing,
                                     common, reduction, avg_factor, axis_name)
  target = jnp.asarray(target)
  if _is_integer(target):
    target = canonical_labels(target, "target")
  pred = as_float(pred)
  if use_sigmoid:
    if _is_integer(target) and target.ndim == pred.ndim - 1:
      valid = _valid_labels(target, ignore_index) & (target >= 0)
      target = _one_hot_or_background(target, pred.shape[-1])
      valid = valid[..., None]
    else:
      valid = (target >= 0) & (target != ignore_index)
      target = as_float(target)
    mask = combine_masks(broadcast_mask(where, pred.shape), jnp.broadcast_to(valid, pred.shape))
    loss = binary_cross_entropy(pred, target, pos_weight=class_weight,
                                label_smoothing=label_smoothing, weight=weight, where=mask,
                                reduction="none")
    count_mask = mask if avg_non_ignore else broadcast_mask(where, pred.shape)
  else:
    loss = cross_entropy(pred, target, class_weight=class_weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, **common)
    user_mask = broadcast_mask(where, loss.shape)
    if avg_non_ignore and _is_integer(target):
      count_mask = combine_masks(user_mask,
                                 _valid_labels(target, ignore_index, pred.shape[-1]))
    else:
      count_mask = user_mask
  return reduce_loss(loss, where=count_mask, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)


def _mmdet_mask_cross_entropy(pred, target, label, class_weight, label_smoothing, common,
                              reduction, avg_factor, axis_name):
  pred = as_float(pred)
  label = canonical_labels(label, "label")
  if pred.ndim != 4 or label.shape != pred.shape[:1]:
    raise ValueError(
        f"use_mask expects pred [N, H, W, C] and label [N], got {pred.shape} and {label.shape}.")
  num_classes = pred.shape[-1]
  valid = _valid_labels(label, num_classes=num_classes)
  safe = _safe_labels(label, valid)
  roi_logits = jnp.take_along_axis(pred, safe[:, None, None, None], axis=-1)[..., 0]
  weight = common["weight"]
  if class_weight is not None:
    roi_weight = _class_vector(class_weight, num_classes, "class_weight")[safe][:, None, None]
    weight = roi_weight if weight is None else roi_weight * weight
  where = combine_masks(broadcast_mask(common["where"], roi_logits.shape),
                        jnp.broadcast_to(valid[:, None, None], roi_logits.shape))
  loss = binary_cross_entropy(roi_logits, target, label_smoothing=label_smoothing,
                              weight=weight, where=where, reduction="none")
  return reduce_loss(loss, where=where, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)
