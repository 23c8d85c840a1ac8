r"""Lovász losses: the convex Lovász extension of the Jaccard loss, softmax and hinge.

Berman et al., The Lovász-Softmax loss, CVPR 2018 (https://arxiv.org/abs/1705.08790).
Inputs as :func:`jaxloss.dice_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_choice
from jaxloss._src.labels import canonical_labels, is_integer
from jaxloss._src.numerics import as_float, safe_divide
from jaxloss._src.reduce import align, fill_masked, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.segmentation.region import (
    CLASS_CHOICES,
    group_pixels,
    probs_and_targets,
    valid_pixels,
)

__all__ = ["lovasz_hinge_loss", "lovasz_softmax_loss"]


def _lovasz_extension(errors: Array, fg: Array, valid: Array) -> Array:
  r"""Lovász extension of the Jaccard loss along axis 1 of ``[G, N, K]``.

  Sorts errors in decreasing order and dots them with the gradient of the
  Jaccard loss along the sorted prefix (Berman et al. 2018, Alg. 1). Pixels
  with ``valid == 0`` sort last and add nothing to either cumulative count,
  so they contribute exactly zero: the same as removing them.
  """
  key = jax.lax.stop_gradient(jnp.where(valid > 0, errors, -jnp.inf))
  order = jnp.argsort(-key, axis=1)
  errors, fg, valid = (jnp.take_along_axis(x, order, axis=1)
                       for x in (jnp.where(valid > 0, errors, 0.0), fg, valid))
  gts = jnp.sum(fg, axis=1, keepdims=True)
  inter = gts - jnp.cumsum(fg, axis=1)
  union = gts + jnp.cumsum((1 - fg) * valid, axis=1)
  jaccard = 1 - safe_divide(inter, union)
  grad = jnp.concatenate([jaccard[:, :1], jnp.diff(jaccard, axis=1)], axis=1)
  return jnp.sum(errors * jax.lax.stop_gradient(grad * valid), axis=1)


def _image_mean_reduce(loss: Array, counted: Array, *, per_image, weight, reduction,
                       avg_factor, axis_name) -> Array:
  """``"none"``: per-class loss; else Berman's mean over images of class means."""
  if reduction == "none" or not per_image:
    return reduce_loss(loss, weight=weight, where=counted, reduction=reduction,
                       avg_factor=avg_factor, axis_name=axis_name)
  share = safe_divide(counted.astype(loss.dtype),
                      jnp.sum(counted, axis=-1, keepdims=True).astype(loss.dtype))
  total = share if weight is None else share * align(as_float(weight), loss.shape)
  return reduce_loss(loss, weight=total, where=counted, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name, count_weight=share)


def lovasz_softmax_loss(logits: ArrayLike, labels: ArrayLike, *, per_image: bool = False,
                        classes: str = "present", ignore_index: int | None = None,
                        weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                        axis_name=None) -> Array:
  r"""Lovász-Softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018).
  https://arxiv.org/abs/1705.08790

  For each class the errors :math:`m_i = |t_{ic} - p_{ic}|` of the softmax
  probabilities are sorted in decreasing order and the loss is
  :math:`\sum_i m_{(i)} g_i` with :math:`g` the increments of the Jaccard
  loss :math:`1 - |F \cap \{1..i\}| / |F \cup \{1..i\}|` of the sorted
  prefix, the Lovász extension of the Jaccard loss. Ignored pixels sort last
  and contribute nothing. ``C == 1`` uses the sigmoid with binary labels.

  Equals Berman's ``lovasz_softmax(softmax(logits), labels, classes,
  per_image, ignore)`` and smp's ``LovaszLoss("multiclass", per_image,
  ignore_index)``: ``per_image=False`` averages the counted classes of the
  pooled batch; ``per_image=True`` averages over images the mean over each
  image's counted classes (an image with every pixel ignored is not counted;
  Berman and smp count it as 0). This mean of means is Berman's, unlike the
  pooled mean over ``[B, C]`` of :func:`dice_loss` with ``per_image=True``.

  Args:
    logits: ``[B, ..., C]``.
    labels: integer labels ``[B, ...]``.
    per_image: score each image separately.
    classes: ``"present"`` (Berman's default) or ``"all"``.
    ignore_index: label value whose pixels are removed.
    weight, where, reduction, avg_factor, axis_name: see the module docstring.
      With ``per_image=False`` and ``axis_name`` each device sorts its own
      pixels (the extension does not decompose over devices).

  Returns:
    Per-class loss ``[C]`` or ``[B, C]`` (0 where not counted) for
    ``reduction="none"``, else a scalar.
  """
  check_choice("classes", classes, CLASS_CHOICES)
  activation = "sigmoid" if jnp.shape(logits)[-1] == 1 else "softmax"
  probs, targets, valid = probs_and_targets(logits, labels, activation=activation,
                                            ignore_index=ignore_index, where=where)
  if not per_image:
    probs, targets, valid = (group_pixels(x, 1) for x in (probs, targets, valid))
  valid = jnp.broadcast_to(valid, probs.shape)
  loss = _lovasz_extension(jnp.abs(targets - probs), targets, valid)
  if classes == "present":
    counted = jnp.sum(targets, axis=1) > 0
  else:
    counted = jnp.broadcast_to(jnp.any(valid > 0, axis=1), loss.shape)
  if not per_image:
    loss, counted = loss[0], counted[0]
  return _image_mean_reduce(loss, counted, per_image=per_image, weight=weight,
                            reduction=reduction, avg_factor=avg_factor, axis_name=axis_name)


def lovasz_hinge_loss(logits: ArrayLike, labels: ArrayLike, *, per_image: bool = False,
                      ignore_index: int | None = None, weight=None, where=None,
                      reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Lovász hinge loss for binary segmentation (Berman et al., CVPR 2018).
  https://arxiv.org/abs/1705.08790

  With signs :math:`\sigma_i = 2 y_i - 1` and hinge errors
  :math:`m_i = 1 - x_i \sigma_i`, the loss is :math:`\sum_i \max(m_{(i)}, 0)\, g_i`
  over the errors sorted in decreasing order, :math:`g` the Jaccard-loss
  increments of the sorted prefix. Ignored pixels sort last (error
  :math:`-\infty`) and contribute nothing.

  Equals Berman's ``lovasz_hinge(logits, labels, per_image, ignore)`` (whose
  default is ``per_image=True``) and smp's ``LovaszLoss("binary")``; an image
  with every pixel ignored is not counted (they count it as 0).

  Args:
    logits: ``[B, ...]`` (a trailing axis of size 1 is dropped).
    labels: ``[B, ...]``; ``1`` is foreground, other values background.
    per_image: score each image separately (``[B]``) instead of the batch.
    ignore_index: label value whose pixels are removed.
    weight, where, reduction, avg_factor, axis_name: as :func:`lovasz_softmax_loss`.

  Returns:
    ``[B]`` (``per_image=True``) or ``[]`` for ``reduction="none"``, else a scalar.
  """
  logits, labels = as_float(logits), jnp.asarray(labels)
  if is_integer(labels):
    labels = canonical_labels(labels)
  if logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  if logits.shape != labels.shape or logits.ndim < 1:
    raise ValueError(f"lovasz_hinge_loss needs logits [B, ...] and labels of the same shape, "
                     f"got {logits.shape} and {labels.shape}.")
  valid = valid_pixels(labels, ignore_index, where)
  valid = jnp.ones(labels.shape, bool) if valid is None else valid
  logits = fill_masked(logits, valid)
  group = lambda x: group_pixels(x[..., None], labels.shape[0] if per_image else 1)
  fg = group((labels == 1) & valid).astype(jnp.float32)
  v = group(valid).astype(jnp.float32)
  errors = jax.nn.relu(1 - group(logits) * (2 * fg - 1))
  loss = _lovasz_extension(errors, fg, v)[:, 0]
  counted = jnp.any(v[..., 0] > 0, axis=1)
  if not per_image:
    loss, counted = loss[0], counted[0]
  return reduce_loss(loss, weight=weight, where=counted, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)
