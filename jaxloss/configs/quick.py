r"""The segmentation quick reference of ``build_loss``: one config for every type.

``build_loss(dict(type="focal_dice", num_classes=4, focal_gamma=2.0))``: every type takes the
same keywords and uses those it needs.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxloss._src.typing import Array, ArrayLike
from jaxloss.classification.entropy import cross_entropy
from jaxloss.classification.focal import softmax_focal_loss
from jaxloss.segmentation.composite import check_num_classes, focal_dice_loss
from jaxloss.segmentation.region import dice_loss, tversky_loss
from jaxloss.segmentation.weights import class_weights

__all__ = ["QUICK_REFERENCE", "quick_ce_loss", "quick_dice_loss", "quick_focal_dice_loss",
           "quick_focal_loss", "quick_tversky_loss", "quick_weighted_ce_loss"]


QUICK_REFERENCE = ("ce", "weighted_ce", "focal", "dice", "focal_dice", "tversky")


def _quick_class_weight(logits, labels, num_classes, ignore_index, use_class_weighting,
                        axis_name=None):
  check_num_classes(logits, num_classes)
  found = jnp.shape(logits)[-1]
  if not use_class_weighting:
    return None
  return class_weights(labels, found, method="inverse", ignore_index=ignore_index,
                       axis_name=axis_name)


def _quick_reference_loss(kind: str):
  """The ``build_loss(dict(type=kind, ...))`` loss of the segmentation quick reference."""

  def loss(logits: ArrayLike, labels: ArrayLike, *, num_classes: int | None = None,
           ignore_index: int | None = None, use_class_weighting: bool = kind == "weighted_ce",
           focal_gamma: float = 2.0, focal_weight: float = 0.5, dice_weight: float = 0.5,
           dice_smooth: float = 1.0, tversky_alpha: float = 0.5, tversky_beta: float = 0.5,
           where=None, axis_name=None) -> Array:
    cw = _quick_class_weight(logits, labels, num_classes, ignore_index, use_class_weighting,
                             axis_name)
    if kind in ("ce", "weighted_ce"):
      return cross_entropy(logits, labels, class_weight=cw, ignore_index=ignore_index,
                           where=where, axis_name=axis_name)
    if kind == "focal":
      return softmax_focal_loss(logits, labels, gamma=focal_gamma, alpha=cw,
                                ignore_index=ignore_index, where=where, axis_name=axis_name)
    if kind == "dice":
      return dice_loss(logits, labels, smooth=dice_smooth, class_weight=cw,
                       ignore_index=ignore_index, where=where, axis_name=axis_name)
    if kind == "tversky":
      return tversky_loss(logits, labels, alpha=tversky_alpha, beta=tversky_beta,
                          smooth=dice_smooth, class_weight=cw, ignore_index=ignore_index,
                          where=where, axis_name=axis_name)
    return focal_dice_loss(logits, labels, focal_gamma=focal_gamma, focal_weight=focal_weight,
                           dice_weight=dice_weight, dice_smooth=dice_smooth, class_weight=cw,
                           ignore_index=ignore_index, where=where, axis_name=axis_name)

  loss.__name__ = loss.__qualname__ = f"quick_{kind}_loss"
  loss.__doc__ = (
      f"Segmentation quick-reference loss ``{kind!r}`` for ``build_loss``.\n\n"
      "Every quick-reference loss takes the same keywords (``focal_gamma``, ``focal_weight``,\n"
      "``dice_weight``, ``dice_smooth``, ``tversky_alpha``, ``tversky_beta``,\n"
      "``use_class_weighting``, ``num_classes``, ``ignore_index``) and uses those it needs, so\n"
      "one config serves every type. ``use_class_weighting`` computes inverse-frequency\n"
      "weights from the labels at call time (:func:`jaxloss.class_weights`, ``'inverse'``);\n"
      "``weighted_ce`` turns it on by default. ``tversky`` uses ``dice_smooth``.\n")
  return loss


quick_ce_loss, quick_weighted_ce_loss, quick_focal_loss, quick_dice_loss, \
    quick_focal_dice_loss, quick_tversky_loss = map(_quick_reference_loss, QUICK_REFERENCE)
