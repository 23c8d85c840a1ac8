r"""Online hard example mining (OHEM) for semantic segmentation, on static shapes.

mmsegmentation's ``OHEMPixelSampler`` keeps the hard pixels of a batch and
trains the cross entropy on them only. It sorts the kept pixels out with
boolean indexing; here a full sort of the (masked) scores and a rank or a
threshold keep every shape static, so the loss runs under ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_range
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.classification.entropy import cross_entropy
from jaxloss.segmentation.region import valid_pixels


def _kept_below_threshold(prob: Array, valid: Array, thresh: float, batch_kept: int) -> Array:
  """Pixels whose target probability is below ``max(thresh, the batch_kept-th smallest)``."""
  flat = jnp.where(valid, prob, jnp.inf).ravel()
  ordered = jnp.sort(flat)
  n_valid = jnp.sum(valid, dtype=jnp.int32)
  index = jnp.clip(jnp.minimum(batch_kept, n_valid - 1), 0, flat.size - 1)
  floor = jnp.where(n_valid > 0, ordered[index], 0.0)
  return valid & (prob < jnp.maximum(floor, thresh))


def _kept_top_losses(ce: Array, valid: Array, batch_kept: int) -> Array:
  """The ``batch_kept`` valid pixels of largest loss (ties: the first in memory order)."""
  flat = jnp.where(valid, -ce, jnp.inf).ravel()
  order = jnp.argsort(flat, stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return valid & (rank.reshape(ce.shape) < batch_kept)


def ohem_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, thresh: float | None = 0.7,
                       min_kept: int = 100000, ignore_index: int | None = None,
                       weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                       axis_name=None) -> Array:
  r"""Softmax cross entropy on the hard pixels only (OHEM; Shrivastava et al., 2016).

  With :math:`p_i` the softmax probability of pixel :math:`i`'s target class
  and :math:`K` = ``min_kept`` :math:`\times B`, a valid pixel is kept when

  .. math::
     p_i < \max\left(\text{thresh},\ p_{(\min(K,\, n - 1))}\right),

  :math:`p_{(j)}` the :math:`j`-th smallest (0-based) of the :math:`n` valid
  probabilities: those the model is unsure of, and at least about :math:`K`
  of them. With ``thresh=None`` the :math:`K` valid pixels of largest cross
  entropy are kept. The selection is mmsegmentation's ``OHEMPixelSampler``
  (``thresh``, ``min_kept``) and carries no gradient; the per-pixel loss is
  :math:`\mathrm{CE}_i` on kept pixels and 0 elsewhere, and ``"mean"``
  divides by the number of valid (non-ignored) pixels: mmsegmentation's
  ``CrossEntropyLoss(avg_non_ignore=True)``. Its default
  ``avg_non_ignore=False`` (all pixels) is ``avg_factor=labels.size``;
  PaddleSeg's ``OhemCrossEntropyLoss`` (mean over kept pixels) is
  ``avg_factor=<number of kept pixels>`` (``reduction="none"`` shows them as
  nonzero entries). https://arxiv.org/abs/1604.03540

  Sampling is per device (as mmsegmentation per GPU); with ``axis_name`` the
  ``"mean"`` divisor is averaged over devices as everywhere in jaxloss.

  Args:
    logits: ``[B, ..., C]`` logits.
    labels: integer labels ``[B, ...]`` (any integer dtype; outside ``[0, C)``
      removed, as :func:`jaxloss.cross_entropy`).
    thresh: keep pixels whose target probability is below this (``None``: keep
      the ``min_kept * B`` largest losses).
    min_kept: kept pixels per image at least (a static Python int >= 1).
    ignore_index: label value whose pixels are removed (mmsegmentation: 255).
    weight, where, reduction, avg_factor, axis_name: see
      :func:`jaxloss.reduce_loss`; per-pixel ``[B, ...]``.

  Returns:
    ``[B, ...]`` for ``reduction="none"``, else a scalar.
  """
  if isinstance(min_kept, bool) or not isinstance(min_kept, int):
    raise TypeError(f"`min_kept` must be a Python int (a static count), got "
                    f"{type(min_kept).__name__}.")
  check_range("min_kept", min_kept, 1)
  if thresh is not None:
    check_range("thresh", thresh, 0.0, 1.0)
  logits = as_float(logits)
  labels = canonical_labels(labels)
  if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
    raise ValueError(f"ohem_cross_entropy needs logits [B, ..., C] and integer labels [B, ...], "
                     f"got {logits.shape} and {labels.shape}.")
  valid = valid_pixels(labels, ignore_index, where, logits.shape[-1])
  if valid is None:
    valid = jnp.ones(labels.shape, bool)
  ce = cross_entropy(logits, labels, ignore_index=ignore_index, where=valid,
                                    reduction="none")
  batch_kept = min_kept * labels.shape[0]
  score = jax.lax.stop_gradient(ce)
  if thresh is None:
    kept = _kept_top_losses(score, valid, batch_kept)
  else:
    kept = _kept_below_threshold(jnp.exp(-score), valid, thresh, batch_kept)
  loss = jnp.where(kept, ce, 0.0)
  return reduce_loss(loss, weight=weight, where=valid, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)
