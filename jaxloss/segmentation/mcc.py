r"""Matthews correlation coefficient loss (Abhishek & Hamarneh, ISBI 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_range
from jaxloss._src.numerics import safe_divide
from jaxloss._src.reduce import reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.segmentation.region import probs_and_targets


def _safe_sqrt(x: Array) -> Array:
  """``sqrt(x)`` for ``x >= 0`` with a finite gradient at 0 (where the ratio is 0 anyway)."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def mcc_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "sigmoid",
             eps: float = 1e-5, per_image: bool = False, ignore_index: int | None = None,
             weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
             axis_name=None) -> Array:
  r"""``1 - MCC`` of soft counts, per class.

  With soft counts over the pooled pixels (each plus ``eps``)
  :math:`TP = \sum p t`, :math:`TN = \sum (1-p)(1-t)`,
  :math:`FP = \sum p (1-t)`, :math:`FN = \sum (1-p) t`,

  .. math::
     L_c = 1 - \frac{TP \cdot TN - FP \cdot FN}
                    {\sqrt{(TP + FP)(TP + FN)}\,\sqrt{(TN + FP)(TN + FN)}}.

  Pooled over batch and space (``per_image=False``, ``[C]``) or per image
  (``[B, C]``). For binary segmentation (``C == 1``, labels ``{0, 1}``)
  this is segmentation_models_pytorch's ``MCCLoss(eps)`` applied to
  ``sigmoid(logits)`` (smp takes probabilities: pass them with
  ``activation=None``). The denominator is taken as two square roots so that
  its product of four counts cannot overflow float32; with ``eps=0`` a zero
  denominator gives :math:`L = 1` with zero gradients.
  https://arxiv.org/abs/2010.13454

  Args:
    logits: ``[B, ..., C]`` logits (probabilities with ``activation=None``).
    labels: integer labels ``[B, ...]`` (binary with ``C == 1``) or dense
      targets ``[B, ..., C]``.
    activation: ``"sigmoid"``, ``"softmax"`` or ``None``.
    eps: added to each of the four counts (>= 0).
    per_image: score each image instead of the pooled batch.
    ignore_index: label value whose pixels are removed (from all four counts).
    weight, where, reduction, avg_factor, axis_name: as :func:`jaxloss.dice_loss`
      (with ``per_image=False`` the counts are summed over ``axis_name``).

  Returns:
    ``[C]`` or ``[B, C]`` for ``reduction="none"``, else a scalar.
  """
  check_range("eps", eps, 0.0)
  probs, targets, valid = probs_and_targets(
      logits, labels, activation=activation, ignore_index=ignore_index, where=where)
  counts: tuple[Array, ...] = (
      jnp.sum(probs * targets, 1), jnp.sum(valid * (1 - probs) * (1 - targets), 1),
      jnp.sum(probs * (1 - targets), 1), jnp.sum(valid * (1 - probs) * targets, 1))
  if not per_image:
    counts = tuple(jnp.sum(c, axis=0) for c in counts)
    if axis_name is not None:
      counts = jax.lax.psum(counts, axis_name)
  tp, tn, fp, fn = (c + eps for c in counts)
  den = _safe_sqrt((tp + fp) * (tp + fn)) * _safe_sqrt((tn + fp) * (tn + fn))
  loss = 1 - safe_divide(tp * tn - fp * fn, den)
  return reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)
