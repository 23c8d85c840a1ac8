r"""MONAI's compound losses, ``DiceCELoss`` and ``DiceFocalLoss``, with MONAI's keywords.

These back the registry types of the same names (``build_loss(dict(type="DiceCELoss",
softmax=True, to_onehot_y=True, lambda_ce=0.5))``) so that MONAI configs port unchanged
and give MONAI's numbers. Channels-last: logits ``[B, ..., C]``,
integer labels ``[B, ...]`` (MONAI's ``B1H[WD]`` with ``to_onehot_y=True``) or dense
targets ``[B, ..., C]``. The shape of the labels decides, so ``to_onehot_y`` is accepted
for config compatibility only.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxloss._src.checks import check_class_weight, check_range
from jaxloss._src.numerics import as_float, safe_divide
from jaxloss._src.reduce import reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.classification.entropy import binary_cross_entropy, cross_entropy
from jaxloss.classification.focal import sigmoid_focal_loss
from jaxloss.segmentation.composite import check_scalar_reduction
from jaxloss.segmentation.region import probs_and_targets, region_stats


def _activation(sigmoid: bool, softmax: bool, num_classes: int) -> str | None:
  if sigmoid and softmax:
    raise ValueError("Incompatible values: pass at most one of sigmoid=True and softmax=True.")
  if softmax and num_classes > 1:
    return "softmax"
  return "sigmoid" if sigmoid else None


def _dice(logits, labels, *, activation, include_background, squared_pred, jaccard,
          smooth_nr, smooth_dr, batch, class_weight, where, reduction, axis_name) -> Array:
  """MONAI ``DiceLoss``: ``1 - (2I + nr) / (P + T + dr)`` per image and class (``jaccard``:
  ``1 - (2I + nr) / (2(P + T - I) + dr)``, MONAI's doubled form, so its smoothing counts
  half), ``class_weight`` multiplying each class."""
  s = region_stats(logits, labels, activation=activation, ignore_index=None,
                                where=where, include_background=include_background,
                                per_image=not batch, squared=squared_pred,
                                axis_name=axis_name)
  den = s.pred + s.true
  if jaccard:
    loss = 1 - safe_divide(2 * s.inter + smooth_nr, 2 * (den - s.inter) + smooth_dr)
  else:
    loss = 1 - safe_divide(2 * s.inter + smooth_nr, den + smooth_dr)
  w = None
  if class_weight is not None:
    check_class_weight(class_weight)
    w = as_float(class_weight)
    if not include_background and w.shape[-1] == jnp.shape(logits)[-1] > 1:
      w = w[1:]
    w = jnp.broadcast_to(w, loss.shape)  # per class (numpy rule), never per image
  return reduce_loss(loss, weight=w, reduction=reduction)


def _dice_options(given: dict) -> dict:
  """The MONAI Dice keywords of a compound loss's call, passed on to :func:`_dice`."""
  keys = ("include_background", "squared_pred", "jaccard", "smooth_nr", "smooth_dr", "batch",
          "class_weight", "where", "reduction", "axis_name")
  return {k: given[k] for k in keys}


def _checks(reduction, name, lambdas, smooth_nr, smooth_dr):
  check_scalar_reduction(reduction, name)
  for key, value in lambdas.items():
    check_range(key, value, 0.0)
  check_range("smooth_nr", smooth_nr, 0.0)
  check_range("smooth_dr", smooth_dr, 0.0)


def monai_dice_ce_loss(logits: ArrayLike, labels: ArrayLike, *, include_background: bool = True,
                       to_onehot_y: bool = False, sigmoid: bool = False, softmax: bool = False,
                       squared_pred: bool = False, jaccard: bool = False,
                       smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                       class_weight: ArrayLike | None = None, lambda_dice: float = 1.0,
                       lambda_ce: float = 1.0, label_smoothing: float = 0.0, where=None,
                       reduction: Reduction = "mean", axis_name=None) -> Array:
  r"""MONAI's ``DiceCELoss``, with MONAI's keywords and numbers.

  .. math::
     L = \lambda_\mathrm{dice} L_\mathrm{Dice} + \lambda_\mathrm{ce} L_\mathrm{CE}

  :math:`L_\mathrm{Dice}` is MONAI's ``DiceLoss`` (per image unless ``batch``,
  separate ``smooth_nr`` / ``smooth_dr``, ``squared_pred``, ``jaccard``, the
  ``"mean"`` or ``"sum"`` over images and classes); :math:`L_\mathrm{CE}` is
  ``torch.nn.CrossEntropyLoss(weight=class_weight,
  label_smoothing=label_smoothing)`` on the raw logits (with ``C == 1``:
  ``BCEWithLogitsLoss(pos_weight=class_weight)``). MONAI's ``weight`` is
  ``class_weight`` here (``weight`` is jaxloss's per-element weight);
  ``to_onehot_y`` is implied by integer labels.
  """
  _checks(reduction, "DiceCELoss", dict(lambda_dice=lambda_dice, lambda_ce=lambda_ce),
          smooth_nr, smooth_dr)
  del to_onehot_y
  num_classes = jnp.shape(logits)[-1]
  dice = _dice(logits, labels, activation=_activation(sigmoid, softmax, num_classes),
               **_dice_options(locals()))
  if num_classes == 1:
    targets = as_float(labels)
    targets = targets if targets.shape == jnp.shape(logits) else targets[..., None]
    ce = binary_cross_entropy(logits, targets, pos_weight=class_weight,
                                             where=where, reduction=reduction,
                                             axis_name=axis_name)
  else:
    ce = cross_entropy(logits, labels, class_weight=class_weight,
                                      label_smoothing=label_smoothing, where=where,
                                      reduction=reduction, axis_name=axis_name)
  return lambda_dice * dice + lambda_ce * ce


def monai_dice_focal_loss(logits: ArrayLike, labels: ArrayLike, *,
                          include_background: bool = True, to_onehot_y: bool = False,
                          sigmoid: bool = False, softmax: bool = False,
                          squared_pred: bool = False, jaccard: bool = False,
                          smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                          gamma: float = 2.0, class_weight: ArrayLike | None = None,
                          lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                          alpha: float | None = None, where=None, reduction: Reduction = "mean",
                          axis_name=None) -> Array:
  r"""MONAI's ``DiceFocalLoss``, with MONAI's keywords and numbers.

  .. math::
     L = \lambda_\mathrm{dice} L_\mathrm{Dice} + \lambda_\mathrm{focal} L_\mathrm{focal}

  :math:`L_\mathrm{Dice}` as in :func:`monai_dice_ce_loss`; :math:`L_\mathrm{focal}` is
  MONAI's ``FocalLoss(gamma, alpha, weight=class_weight)``: a *sigmoid* focal loss on the
  raw logits against the one-hot targets even with ``softmax=True`` (MONAI's focal term
  never sees the softmax), averaged over every element (background dropped with
  ``include_background=False``); MONAI's ``"sum"`` of it adds the spatial mean of each
  image and class. ``class_weight`` multiplies each class in both terms.
  """
  _checks(reduction, "DiceFocalLoss", dict(lambda_dice=lambda_dice, lambda_focal=lambda_focal),
          smooth_nr, smooth_dr)
  del to_onehot_y
  num_classes = jnp.shape(logits)[-1]
  dice = _dice(logits, labels, activation=_activation(sigmoid, softmax, num_classes),
               **_dice_options(locals()))
  _, targets, _ = probs_and_targets(logits, labels, activation=None,
                                                 ignore_index=None, where=where)
  x = as_float(logits).reshape(targets.shape)
  valid = None if where is None else jnp.broadcast_to(
      jnp.asarray(where).reshape(targets.shape[:2] + (1,)), targets.shape)
  x = x if valid is None else jnp.where(valid, x, 0.0)
  check_class_weight(class_weight)
  w = None if class_weight is None else as_float(class_weight)
  if not include_background and num_classes > 1:
    x, targets = x[..., 1:], targets[..., 1:]
    valid = None if valid is None else valid[..., 1:]
    w = w[1:] if w is not None and w.ndim and w.shape[0] == num_classes else w
  if reduction == "mean":
    focal = sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, weight=w,
                                              where=valid, axis_name=axis_name)
  else:  # MONAI's "sum" adds the spatial mean of each image and class
    per = sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, weight=w,
                                            where=valid, reduction="none")
    count = x.shape[1] if valid is None else jnp.sum(valid, axis=1)
    focal = jnp.sum(safe_divide(jnp.sum(per, axis=1), jnp.asarray(count, per.dtype)))
  return lambda_dice * dice + lambda_focal * focal
