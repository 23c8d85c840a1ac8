r"""Quality-aware classification losses of dense detectors: quality focal, varifocal and
distribution focal losses.

Li et al., Generalized Focal Loss, NeurIPS 2020 (https://arxiv.org/abs/2006.04388);
Zhang et al., VarifocalNet, CVPR 2021 (https://arxiv.org/abs/2008.13367).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_broadcast, check_classes, check_gamma, check_range
from jaxloss._src.labels import class_labels, one_hot, sigmoid_inputs
from jaxloss._src.numerics import as_float, safe_pow
from jaxloss._src.reduce import broadcast_mask, fill_masked, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.classification.entropy import sigmoid_bce

__all__ = ["distribution_focal_loss", "quality_focal_elements", "quality_focal_loss",
           "summed_quality_focal_loss", "varifocal_loss"]


def quality_focal_elements(logits, labels, scores, beta, where):
  """Per-element QFL ``[..., C]`` and the per-sample mask ``[...]``."""
  check_gamma(beta, "beta")
  logits = as_float(logits)
  num_classes = check_classes(logits, "quality_focal_loss")
  labels = class_labels(labels, logits, "quality_focal_loss")
  check_broadcast("scores", jnp.shape(scores), labels.shape, "the labels' shape",
                  " Pass one quality (IoU) target per sample, of the labels' shape [...].")
  mask = broadcast_mask(where, labels.shape)
  logits = fill_masked(logits, mask)
  scores = fill_masked(jnp.broadcast_to(as_float(scores), labels.shape), mask)
  targets = one_hot(labels, num_classes) * scores[..., None]
  modulator = safe_pow(jnp.abs(targets - jax.nn.sigmoid(logits)), beta)
  return sigmoid_bce(logits, targets) * modulator, mask


def quality_focal_loss(logits: ArrayLike, labels: ArrayLike, scores: ArrayLike, *,
                       beta: float = 2.0, weight=None, where=None, reduction: Reduction = "mean",
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
  counted ``[..., C]`` elements (as
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
  loss, mask = quality_focal_elements(logits, labels, scores, beta, where)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def summed_quality_focal_loss(logits: ArrayLike, labels: ArrayLike, scores: ArrayLike, *,
                         beta: float = 2.0, weight=None, where=None, reduction: Reduction = "mean",
                         avg_factor=None, axis_name=None) -> Array:
  r"""mmdetection's ``quality_focal_loss``: :func:`quality_focal_loss` summed over
  classes, so per sample ``[...]``, composing with mmdetection's per-sample
  weights and ``avg_factor`` (``"mean"`` divides by the number of samples)."""
  loss, mask = quality_focal_elements(logits, labels, scores, beta, where)
  return reduce_loss(jnp.sum(loss, axis=-1), weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def varifocal_loss(logits: ArrayLike, targets: ArrayLike, *, alpha: float = 0.75,
                   gamma: float = 2.0, iou_weighted: bool = True, weight=None, where=None,
                   reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Varifocal loss (Zhang et al., VarifocalNet, CVPR 2021).
  https://arxiv.org/abs/2008.13367

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
  check_gamma(gamma)
  check_range("alpha", alpha, 0.0)
  if jnp.shape(targets) != jnp.shape(logits):
    raise ValueError(
        f"varifocal_loss needs soft IoU-aware targets of the logits' shape {jnp.shape(logits)}, "
        f"got {jnp.shape(targets)}; build them as one_hot(labels, C) * iou.")
  logits, targets, mask = sigmoid_inputs(logits, as_float(targets), where)
  positive = targets > 0
  negative_weight = alpha * safe_pow(jnp.abs(jax.nn.sigmoid(logits) - targets), gamma)
  focal_weight = jnp.where(positive, targets if iou_weighted else 1.0, negative_weight)
  loss = sigmoid_bce(logits, targets) * focal_weight
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def distribution_focal_loss(logits: ArrayLike, targets: ArrayLike, *, weight=None, where=None,
                            reduction: Reduction = "mean", avg_factor=None,
                            axis_name=None) -> Array:
  r"""Distribution focal loss (Li et al., Generalized Focal Loss, NeurIPS 2020).
  https://arxiv.org/abs/2006.04388

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
  n = check_classes(logits, "distribution_focal_loss", minimum=2) - 1
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
