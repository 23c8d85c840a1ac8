r"""The focal family of classification losses: sigmoid, softmax and Gaussian focal losses.

Lin et al., Focal Loss for Dense Object Detection, ICCV 2017
(https://arxiv.org/abs/1708.02002); Law and Deng, CornerNet, ECCV 2018
(https://arxiv.org/abs/1808.01244) for the Gaussian focal loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src import kernels
from jaxloss._src.checks import check_classes, check_gamma, check_range, common_shape, focal_alpha
from jaxloss._src.labels import (
    canonical_labels,
    class_labels,
    class_vector,
    is_integer,
    safe_labels,
    sigmoid_inputs,
    valid_labels,
)
from jaxloss._src.numerics import as_float, safe_pow
from jaxloss._src.reduce import (
    broadcast_mask,
    combine_masks,
    fill_masked,
    reduce_loss,
    reduce_total,
)
from jaxloss._src.typing import Array, ArrayLike, Reduction

__all__ = ["GAUSSIAN_FOCAL_EPS", "gaussian_focal_loss", "sigmoid_focal_loss",
           "softmax_focal_loss"]


def _sigmoid_focal(logits: Array, targets: Array, alpha: float | None, gamma: float) -> Array:
  """Per-element torchvision focal loss ``a_t (1 - p_t)^gamma BCE(x, t)``.

  ``targets`` are float ``[..., C]``, or integer labels ``[...]`` that the
  kernel one-hot encodes on the fly (no ``[..., C]`` target array).
  """
  return kernels.sigmoid_focal(logits, targets, alpha=alpha, gamma=gamma)


def sigmoid_focal_loss(logits: ArrayLike, targets: ArrayLike, *, alpha: float | None = 0.25,
                       gamma: float = 2.0, weight=None, where=None, reduction: Reduction = "mean",
                       avg_factor=None, axis_name=None) -> Array:
  r"""Sigmoid focal loss (Lin et al., Focal Loss for Dense Object Detection, 2017).
  https://arxiv.org/abs/1708.02002

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
      float targets (binary or soft) of the logits' rank; float class
      indices ``[...]`` raise ``TypeError``, other shapes ``ValueError``.
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
  check_gamma(gamma)
  alpha = focal_alpha(alpha)
  logits, labels = as_float(logits), jnp.asarray(targets)
  if (is_integer(labels) and labels.shape == logits.shape[:-1] and logits.shape[-1] > 1):
    labels = canonical_labels(labels)
    if weight is None and where is None and reduction != "none" and kernels.fused_enabled():
      total = kernels.sigmoid_focal_sum(logits, labels, alpha=alpha, gamma=gamma)
      return reduce_total(total, logits.size, reduction=reduction, avg_factor=avg_factor,
                          axis_name=axis_name)
    mask = broadcast_mask(where, logits.shape)
    logits, targets = fill_masked(logits, mask), labels
  else:
    logits, targets, mask = sigmoid_inputs(logits, targets, where)
  loss = _sigmoid_focal(logits, targets, alpha, gamma)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def softmax_focal_loss(logits: ArrayLike, labels: ArrayLike, *, gamma: float = 2.0,
                       alpha: float | ArrayLike | None = None, ignore_index: int | None = None,
                       weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                       axis_name=None) -> Array:
  r"""Multi-class (softmax) focal loss (Lin et al., 2017, section 3 generalised).
  https://arxiv.org/abs/1708.02002

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
  check_gamma(gamma)
  check_range("alpha", alpha, 0.0)
  logits = as_float(logits)
  num_classes = check_classes(logits, "softmax_focal_loss")
  alpha = class_vector(alpha, num_classes, "alpha", scalar=True)
  labels = class_labels(labels, logits, "softmax_focal_loss")
  mask = combine_masks(broadcast_mask(where, labels.shape),
                       valid_labels(labels, ignore_index, num_classes))
  labels = safe_labels(labels, mask)
  logp = jax.nn.log_softmax(fill_masked(logits, mask), axis=-1)
  logp_y = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  loss = -safe_pow(-jnp.expm1(logp_y), gamma) * logp_y
  if alpha is not None:
    loss = loss * (alpha if alpha.ndim == 0 else alpha[labels])
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


GAUSSIAN_FOCAL_EPS = 1e-12


def gaussian_focal_loss(probs: ArrayLike, heatmap: ArrayLike, *, alpha: float = 2.0,
                        gamma: float = 4.0, pos_weight: float = 1.0, neg_weight: float = 1.0,
                        weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                        axis_name=None) -> Array:
  r"""Gaussian focal loss (CornerNet, Law & Deng 2018; CenterNet, Zhou et al. 2019).
  https://arxiv.org/abs/1808.01244

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
  check_gamma(alpha, "alpha")
  check_gamma(gamma)
  check_range("pos_weight", pos_weight, 0.0)
  check_range("neg_weight", neg_weight, 0.0)
  probs = as_float(probs)
  heatmap = as_float(heatmap)
  shape = common_shape(("probs", "heatmap"), (probs.shape, heatmap.shape),
                       " Pass a heatmap of the predictions' shape [..., C].")
  mask = broadcast_mask(where, shape)
  probs = fill_masked(jnp.broadcast_to(probs, shape), mask, 0.5)
  heatmap = fill_masked(jnp.broadcast_to(heatmap, shape), mask)
  # mmdetection adds eps inside the logs; under jit XLA folds (1 - p) + eps into
  # (1 + eps) - p == 1 - p in float32, so we clamp instead (same value to float32
  # precision, finite value and gradient at p == 0 and p == 1).
  log_p = jnp.log(jnp.maximum(probs, GAUSSIAN_FOCAL_EPS))
  log_not_p = jnp.log(jnp.maximum(1 - probs, GAUSSIAN_FOCAL_EPS))
  pos = -log_p * safe_pow(1 - probs, alpha) * (heatmap == 1).astype(probs.dtype)
  neg = -log_not_p * safe_pow(probs, alpha) * safe_pow(1 - heatmap, gamma)
  loss = pos_weight * pos + neg_weight * neg
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)
