r"""Composite segmentation losses: binary mask BCE, cross entropy + Dice, focal + Dice."""

from __future__ import annotations

import jax.numpy as jnp

from jaxloss._src.checks import check_choice, check_class_weight
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.classification.entropy import binary_cross_entropy, cross_entropy
from jaxloss.classification.focal import softmax_focal_loss
from jaxloss.segmentation.region import dice_loss

__all__ = ["check_num_classes", "check_scalar_reduction", "combined_segmentation_loss",
           "focal_dice_loss",
           "mask_loss"]


def mask_loss(logits: ArrayLike, masks: ArrayLike, *, pos_weight: ArrayLike | None = None,
              weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
              axis_name=None) -> Array:
  r"""Binary cross entropy of instance mask logits (Mask R-CNN's mask loss).
  https://arxiv.org/abs/1703.06870

  .. math::
     \ell = -\left[w_p\, m \log \sigma(x) + (1 - m) \log(1 - \sigma(x))\right]

  per pixel, as mmdetection's ``mask_cross_entropy`` on the masks of the
  ground-truth classes: select each instance's class channel before calling
  (``jnp.take_along_axis``). :func:`jaxloss.binary_cross_entropy` computes it.

  Args:
    logits: mask logits ``[N, H, W]`` (any shape).
    masks: binary (or soft) target masks of the same shape.
    pos_weight: weight of the foreground term (scalar), as torch's ``pos_weight``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    The per-pixel loss for ``reduction="none"``, else a scalar (``"mean"``
    over all pixels, as mmdetection).
  """
  logits, masks = as_float(logits), as_float(masks)
  if logits.shape != masks.shape:
    raise ValueError(f"mask_loss needs masks of the logits' shape {logits.shape}, "
                     f"got {masks.shape}.")
  return binary_cross_entropy(
      logits, masks, pos_weight=pos_weight, weight=weight, where=where, reduction=reduction,
      avg_factor=avg_factor, axis_name=axis_name)


def check_num_classes(logits: ArrayLike, num_classes: int | None) -> None:
  """``ValueError`` unless ``num_classes`` (when given) is the logits' class count."""
  found = jnp.shape(logits)[-1]
  if num_classes is not None and num_classes != found:
    raise ValueError(f"num_classes={num_classes} but the logits have {found} classes "
                     f"(the last axis); pass logits [B, ..., {num_classes}].")


def check_scalar_reduction(reduction: str, name: str) -> None:
  check_choice("reduction", reduction, ("mean", "sum"),
               f" {name} returns a scalar: 'mean' or 'sum' of its pixelwise term.")


def combined_segmentation_loss(logits: ArrayLike, labels: ArrayLike, *, ce_weight: float = 1.0,
                               dice_weight: float = 1.0, class_weight: ArrayLike | None = None,
                               ignore_index: int | None = None, dice_smooth: float = 1.0,
                               weight=None, where=None, reduction: Reduction = "mean",
                               avg_factor=None, axis_name=None) -> Array:
  r"""Cross entropy plus soft Dice, the usual recipe for imbalanced segmentation.
  https://arxiv.org/abs/1606.04797

  .. math::
     L = \lambda_{ce}\, \mathrm{CE} + \lambda_{dice}\, \mathrm{Dice}

  with :func:`jaxloss.cross_entropy` (``"mean"`` over the counted pixels,
  divided by their summed class weights as torch) and :func:`dice_loss`
  (softmax, ``per_image=False``, ``classes="all"``, ``smooth=dice_smooth``).
  ``class_weight`` weighs both: CE's classes and Dice's class mean.

  Args:
    logits: ``[B, ..., C]``.
    labels: integer labels ``[B, ...]``.
    ce_weight, dice_weight: the two coefficients.
    class_weight: ``[C]`` per-class weights (e.g. :func:`jaxloss.class_weights`).
    ignore_index: label value whose pixels are removed from both terms.
    dice_smooth: Dice smoothing.
    weight: per-pixel weight ``[B, ...]`` of the CE term.
    where: boolean pixel mask ``[B, ...]``.
    reduction: ``"mean"`` or ``"sum"``, of the CE term (the Dice term is
      always its class mean, so ``"none"`` is not offered).
    avg_factor: divisor of the CE term's ``"mean"``.
    axis_name: mapped axis for data parallelism (see :func:`dice_loss`).

  Returns:
    A scalar.
  """
  check_scalar_reduction(reduction, "combined_segmentation_loss")
  ce = cross_entropy(logits, labels, class_weight=class_weight,
                                     ignore_index=ignore_index, weight=weight, where=where,
                                     reduction=reduction, avg_factor=avg_factor,
                                     axis_name=axis_name)
  dice = dice_loss(logits, labels, smooth=dice_smooth, class_weight=class_weight,
                   ignore_index=ignore_index, where=where, axis_name=axis_name)
  return ce_weight * ce + dice_weight * dice


def focal_dice_loss(logits: ArrayLike, labels: ArrayLike, *, focal_gamma: float = 2.0,
                    focal_weight: float = 0.5, dice_weight: float = 0.5,
                    dice_smooth: float = 1.0, class_weight: ArrayLike | None = None,
                    ignore_index: int | None = None, num_classes: int | None = None,
                    weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                    axis_name=None) -> Array:
  r"""Softmax focal loss plus soft Dice.
  https://arxiv.org/abs/1708.02002

  .. math::
     L = \lambda_{f}\, \mathrm{Focal}_\gamma + \lambda_{dice}\, \mathrm{Dice}

  with :func:`jaxloss.softmax_focal_loss` (``alpha=class_weight``, ``"mean"``
  over the counted pixels) and :func:`dice_loss` (softmax, ``per_image=False``,
  ``classes="all"``, ``smooth=dice_smooth``, ``class_weight`` weighting its
  class mean).

  Args:
    logits: ``[B, ..., C]``.
    labels: integer labels ``[B, ...]``.
    focal_gamma: focusing parameter.
    focal_weight, dice_weight: the two coefficients.
    dice_smooth: Dice smoothing.
    class_weight: ``[C]`` per-class weights.
    ignore_index: label value whose pixels are removed from both terms.
    num_classes: ``C``, checked against the logits when given (the quick-reference
      ``focal_dice`` config carries it).
    weight: per-pixel weight ``[B, ...]`` of the focal term.
    where: boolean pixel mask ``[B, ...]``.
    reduction: ``"mean"`` or ``"sum"``, of the focal term (the Dice term is
      always its class mean).
    avg_factor: divisor of the focal term's ``"mean"``.
    axis_name: mapped axis for data parallelism.

  Returns:
    A scalar.
  """
  check_scalar_reduction(reduction, "focal_dice_loss")
  check_num_classes(logits, num_classes)
  check_class_weight(class_weight)
  focal = softmax_focal_loss(logits, labels, gamma=focal_gamma, alpha=class_weight,
                             ignore_index=ignore_index, weight=weight, where=where,
                             reduction=reduction, avg_factor=avg_factor, axis_name=axis_name)
  dice = dice_loss(logits, labels, smooth=dice_smooth, class_weight=class_weight,
                   ignore_index=ignore_index, where=where, axis_name=axis_name)
  return focal_weight * focal + dice_weight * dice
