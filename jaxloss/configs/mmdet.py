r"""mmdetection's loss modules as registry rows: its keywords (``use_sigmoid``,
``use_mask``, ``avg_non_ignore``) and its normalisations, over jaxloss's losses."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax.numpy as jnp

from jaxloss._src.labels import (
    canonical_labels,
    class_vector,
    is_integer,
    one_hot,
    safe_labels,
    valid_labels,
)
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import broadcast_mask, combine_masks, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.classification.entropy import binary_cross_entropy, cross_entropy
from jaxloss.classification.focal import sigmoid_focal_loss
from jaxloss.classification.quality import summed_quality_focal_loss, varifocal_loss

__all__ = ["accepting_use_sigmoid", "mmdet_cross_entropy", "mmdet_focal_loss",
           "mmdet_quality_focal_loss", "mmdet_varifocal_loss"]


def accepting_use_sigmoid(fn: Callable[..., Array]) -> Callable[..., Array]:
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
  call.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
  call.__name__ = call.__qualname__ = fn.__name__
  call.__doc__ = fn.__doc__
  return call


mmdet_focal_loss = accepting_use_sigmoid(sigmoid_focal_loss)


mmdet_quality_focal_loss = accepting_use_sigmoid(summed_quality_focal_loss)
# Named after the function it sums, so that the Flax wrappers' docs link to it.
mmdet_quality_focal_loss.__name__ = mmdet_quality_focal_loss.__qualname__ = "quality_focal_loss"


mmdet_varifocal_loss = accepting_use_sigmoid(varifocal_loss)


def mmdet_cross_entropy(pred: ArrayLike, target: ArrayLike, label: ArrayLike | None = None, *,
                        use_sigmoid: bool = False, use_mask: bool = False,
                        avg_non_ignore: bool = False, class_weight: ArrayLike | None = None,
                        ignore_index: int | None = None, label_smoothing: float = 0.0,
                        weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
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
  if use_mask:
    return _mmdet_mask_cross_entropy(pred, target, label, class_weight, label_smoothing,
                                     weight, where, reduction, avg_factor, axis_name)
  target = jnp.asarray(target)
  if is_integer(target):
    target = canonical_labels(target, "target")
  pred = as_float(pred)
  if use_sigmoid:
    if is_integer(target) and target.ndim == pred.ndim - 1:
      kept = valid_labels(target, ignore_index)
      valid = (target >= 0) if kept is None else kept & (target >= 0)
      target = one_hot(target, pred.shape[-1])
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
                         label_smoothing=label_smoothing, weight=weight, where=where,
                         reduction="none")
    user_mask = broadcast_mask(where, loss.shape)
    if avg_non_ignore and is_integer(target):
      count_mask = combine_masks(user_mask,
                                 valid_labels(target, ignore_index, pred.shape[-1]))
    else:
      count_mask = user_mask
  return reduce_loss(loss, where=count_mask, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)


def _mmdet_mask_cross_entropy(pred, target, label, class_weight, label_smoothing, weight, where,
                              reduction, avg_factor, axis_name):
  pred = as_float(pred)
  label = canonical_labels(label, "label")
  if pred.ndim != 4 or label.shape != pred.shape[:1]:
    raise ValueError(
        f"use_mask expects pred [N, H, W, C] and label [N], got {pred.shape} and {label.shape}.")
  num_classes = pred.shape[-1]
  valid = (label >= 0) & (label < num_classes)
  safe = safe_labels(label, valid)
  roi_logits = jnp.take_along_axis(pred, safe[:, None, None, None], axis=-1)[..., 0]
  if class_weight is not None:
    roi_weight = class_vector(class_weight, num_classes, "class_weight")[safe][:, None, None]
    weight = roi_weight if weight is None else roi_weight * weight
  where = combine_masks(broadcast_mask(where, roi_logits.shape),
                        jnp.broadcast_to(valid[:, None, None], roi_logits.shape))
  loss = binary_cross_entropy(roi_logits, target, label_smoothing=label_smoothing,
                              weight=weight, where=where, reduction="none")
  return reduce_loss(loss, where=where, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)
