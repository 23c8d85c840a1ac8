r"""Segmentation losses: Dice, Jaccard, Tversky, generalized Dice and Lovász.

Inputs are channels-last: logits ``[B, ..., C]`` and integer labels
``[B, ...]`` (or dense one-hot/soft targets ``[B, ..., C]`` for the overlap
losses). The overlap ("region") losses pool soft counts per class,

.. math::
   I_c = \sum_i p_{ic} t_{ic}, \quad P_c = \sum_i p_{ic}, \quad T_c = \sum_i t_{ic},

over batch and space (``per_image=False``, as segmentation_models_pytorch)
or over the space of each image (``per_image=True``, as MONAI's default
``batch=False``), and return one loss per class: ``[C']`` or ``[B, C']``.

Conventions shared by the region losses:

* ``ignore_index`` and ``where`` (a boolean pixel mask ``[B, ...]``) remove
  pixels: they change neither the value nor the gradient, whatever their
  label (``255``, ``-1``, ...) or logits (even NaN).
* With the softmax, labels outside ``[0, C)`` are removed like ignored ones
  (as :func:`jaxloss.cross_entropy`); with ``activation="sigmoid"`` or
  ``None`` they are background (an all-zero target row, DESIGN.md). A
  single-channel output (``C == 1``) reads labels as binary targets,
  ``1`` = foreground, anything else = background (MONAI and smp binary mode).
* ``include_background=False`` drops class 0 (after the softmax, as MONAI);
  with ``C == 1`` the channel is the foreground and is kept.
* ``classes="all"`` scores every class; ``"present"`` counts only classes
  with target mass (``T_c > 0``) in the pooled group (the batch, or the image
  with ``per_image=True``): absent classes give 0 and are not counted by
  ``"mean"``. smp zeroes absent classes but still divides by ``C``; its value
  is ``reduction="mean", avg_factor=C'`` with ``classes="present"``.
  MONAI scores absent classes (``classes="all"``). Each function's docstring
  lists the keyword combination that reproduces each library.
* ``weight`` multiplies the per-class loss (a ``[B]`` weight with
  ``per_image=True`` weights images); ``class_weight`` (``[C]``, or ``[C']``
  without background) weights classes and ``"mean"`` is
  :math:`\sum_c w_c L_c / \sum_c w_c` over the counted entries.
  ``reduction="none"`` returns the weighted per-class loss.
* ``axis_name`` with ``per_image=False``: the pooled counts are summed
  (``psum``) over the mapped axis, so every device returns the loss of the
  whole batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss import _fused, classification
from jaxloss._reduce import (
    Array,
    ArrayLike,
    align,
    as_float,
    broadcast_mask,
    check_choice,
    check_range,
    combine_masks,
    fill_masked,
    reduce_loss,
    safe_divide,
)
from jaxloss._src.labels import canonical_labels, is_integer
from jaxloss.class_weights import class_weights

ACTIVATIONS = ("softmax", "sigmoid", None)
CLASS_CHOICES = ("all", "present")
WEIGHT_TYPES = ("square", "simple", "uniform")


def valid_pixels(labels: Array, ignore_index: int | None, where: ArrayLike | None,
                 num_classes: int | None = None) -> Array | None:
  """Boolean mask of the pixels that count (``None``: all).

  With ``num_classes`` (softmax losses) labels outside ``[0, C)`` do not count
  either, as in :func:`jaxloss.cross_entropy`.
  """
  return combine_masks(classification._valid_labels(labels, ignore_index, num_classes),
                       broadcast_mask(where, labels.shape))


def _targets(labels: Array, num_classes: int) -> Array:
  """One-hot targets ``[..., C]`` (background rows); binary reading when ``C == 1``."""
  return classification._sigmoid_targets(labels, num_classes)


def _groups(x: Array, batch: int) -> Array:
  """``[B, ..., K]`` as ``[batch, N, K]``, ``batch`` ``B`` or 1 (explicit ``N``: a
  reshape to ``-1`` of an empty batch is ambiguous)."""
  pixels = math.prod(x.shape[:-1])
  n = pixels // batch if batch else math.prod(x.shape[1:-1])
  return x.reshape(batch, n, x.shape[-1])


def _activate(logits: Array, activation: str | None) -> Array:
  if activation == "softmax":
    return jax.nn.softmax(logits, axis=-1)
  if activation == "sigmoid":
    return jax.nn.sigmoid(logits)
  return logits


def probs_and_targets(logits: ArrayLike, labels: ArrayLike, *, activation: str | None,
                      ignore_index: int | None, where: ArrayLike | None):
  """Masked probabilities and targets, flattened to ``[B, N, C]``.

  Returns ``(probs, targets, valid)`` where ``valid`` is ``[B, N, 1]`` float
  (1 for counted pixels) and both ``probs`` and ``targets`` are 0 at the
  others, with ``logits`` sanitised there before the activation.
  """
  check_choice("activation", activation, ACTIVATIONS)
  logits = as_float(logits)
  labels = jnp.asarray(labels)
  if logits.ndim < 2:
    raise ValueError(f"logits must be [B, ..., C], got shape {logits.shape}.")
  num_classes = logits.shape[-1]
  if activation == "softmax" and num_classes == 1:
    raise ValueError("activation='softmax' over a single channel is constant; use "
                     "activation='sigmoid' for binary segmentation with C == 1.")
  pixel_shape = logits.shape[:-1]
  if labels.shape == logits.shape:
    if ignore_index is not None:
      raise ValueError("ignore_index needs integer labels [B, ...]; with dense targets "
                       "[B, ..., C] pass where=<pixel mask> instead.")
    targets = as_float(labels)
    valid = broadcast_mask(where, pixel_shape)
  elif labels.shape == pixel_shape:
    labels = canonical_labels(labels)
    in_range = num_classes if activation == "softmax" else None
    valid = valid_pixels(labels, ignore_index, where, in_range)
    targets = _targets(labels, num_classes)
  else:
    raise ValueError(
        f"labels of shape {labels.shape} do not match logits {logits.shape}: pass integer "
        f"labels {pixel_shape} or dense targets {logits.shape}.")
  if valid is None:
    valid = jnp.ones(pixel_shape, bool)
  probs = _activate(fill_masked(logits, valid), activation)
  v = valid.astype(jnp.float32)[..., None]
  flat = lambda x: _groups(x, logits.shape[0])
  targets = fill_masked(targets, valid)
  return flat(probs * v), flat(targets), flat(v)


class RegionStats(NamedTuple):
  """Soft counts per class, ``[C']`` or ``[B, C']``."""
  inter: Array
  pred: Array
  true: Array
  mass: Array


def _softmax_labels(logits: ArrayLike, labels: ArrayLike, activation: str | None) -> bool:
  """Whether the kernel applies: softmax over ``C > 1`` classes, labels ``[B, ...]``."""
  shape = jnp.shape(logits)
  return (activation == "softmax" and len(shape) >= 2 and shape[-1] > 1
          and jnp.shape(labels) == shape[:-1])


def _softmax_label_stats(logits, labels, *, ignore_index, where, squared) -> RegionStats:
  """Per-image :math:`I, P, T` ``[B, C]`` of the softmax against integer labels."""
  logits = as_float(logits)
  labels = canonical_labels(labels)
  num_classes = logits.shape[-1]
  valid = valid_pixels(labels, ignore_index, where, num_classes)
  flat = lambda x: None if x is None else _groups(x[..., None], logits.shape[0])[..., 0]
  inter, pred, true = _fused.softmax_region_stats(_groups(logits, logits.shape[0]),
                                                  flat(labels), flat(valid), squared=squared)
  return RegionStats(inter=inter, pred=pred, true=true, mass=true)


def _dense_stats(logits, labels, *, activation, ignore_index, where, squared) -> RegionStats:
  """Per-image :math:`I, P, T` ``[B, C]`` from probabilities and dense targets."""
  probs, targets, _ = probs_and_targets(logits, labels, activation=activation,
                                        ignore_index=ignore_index, where=where)
  power = jnp.square if squared else (lambda x: x)
  return RegionStats(
      inter=jnp.sum(probs * targets, axis=1),
      pred=jnp.sum(power(probs), axis=1),
      true=jnp.sum(power(targets), axis=1),
      mass=jnp.sum(targets, axis=1))


def region_stats(logits, labels, *, activation, ignore_index, where, include_background,
                 per_image, squared=False, axis_name=None) -> RegionStats:
  """Pools :math:`I, P, T` per class (see the module docstring).

  The softmax against integer labels runs the one-hot free kernel
  :func:`jaxloss._fused.softmax_region_stats` on CPU (plain autodiff inside
  ``jaxloss.fused_kernels(False)`` and on other backends, where it is faster:
  :func:`jaxloss._fused.region_kernel_pays`).
  """
  if (_softmax_labels(logits, labels, activation) and _fused.fused_enabled()
      and _fused.region_kernel_pays()):
    stats = _softmax_label_stats(logits, labels, ignore_index=ignore_index, where=where,
                                 squared=squared)
  else:
    stats = _dense_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                         where=where, squared=squared)
  if not include_background and stats.inter.shape[-1] > 1:
    stats = RegionStats(*(s[..., 1:] for s in stats))
  if not per_image:
    stats = RegionStats(*(jnp.sum(s, axis=0) for s in stats))
  if axis_name is not None and not per_image:
    stats = RegionStats(*jax.lax.psum(tuple(stats), axis_name))
  return stats


def _class_weight(class_weight: ArrayLike | None, num_kept: int, dropped: bool) -> Array | None:
  if class_weight is None:
    return None
  cw = as_float(class_weight)
  if cw.ndim != 1 or cw.shape[0] not in (num_kept, num_kept + int(dropped)):
    raise ValueError(
        f"class_weight must be a vector [C] (one weight per class), got shape {cw.shape} "
        f"for {num_kept + int(dropped)} classes.")
  return cw[1:] if cw.shape[0] != num_kept else cw


def reduce_classes(loss: Array, mass: Array, *, classes: str, class_weight, dropped: bool,
                   weight, reduction, avg_factor, axis_name) -> Array:
  """Reduces a per-class loss ``[..., C']`` (see the module docstring)."""
  cw = _class_weight(class_weight, loss.shape[-1], dropped)
  mask = mass > 0 if classes == "present" else None
  total_weight = None
  if weight is not None:
    total_weight = align(as_float(weight), loss.shape)
  count = None if cw is None else jnp.broadcast_to(cw, loss.shape)
  if count is not None:
    total_weight = count if total_weight is None else total_weight * count
  return reduce_loss(loss, weight=total_weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name, count_weight=count)


def _region_checks(classes: str, logits: ArrayLike, include_background: bool, smooth=0.0,
                   eps=0.0) -> bool:
  """Validates ``classes``, ``smooth`` and ``eps``; returns whether class 0 is dropped."""
  check_choice("classes", classes, CLASS_CHOICES)
  check_range("smooth", smooth, 0.0)
  check_range("eps", eps, 0.0)
  return not include_background and jnp.shape(logits)[-1] > 1


def _ratio(num: Array, den: Array, eps: float) -> Array:
  """``num / den``, with ``eps`` as the denominator only where ``den`` is 0.

  ``den >= 0`` here (a sum of soft counts and ``smooth``), so ``eps`` never
  overrides a positive ``smooth``; where both ``den`` and ``eps`` are 0
  (``smooth=0``, nothing counted) the ratio is 0, with zero gradients.
  """
  return safe_divide(num, jnp.where(den > 0, den, eps))


def dice_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
              smooth: float = 1.0, eps: float = 1e-7, ignore_index: int | None = None,
              class_weight: ArrayLike | None = None, include_background: bool = True,
              per_image: bool = False, squared: bool = False, classes: str = "all",
              weight=None, where=None, reduction: str = "mean", avg_factor=None,
              axis_name=None) -> Array:
  r"""Soft Dice loss per class (Milletari et al., V-Net, 2016).

  .. math::
     L_c = 1 - \frac{2 I_c + s}{P_c + T_c + s}

  with ``squared=True`` using :math:`\sum p^2` and :math:`\sum t^2` in the
  denominator (V-Net). ``eps`` replaces the denominator only where it is 0,
  i.e. ``smooth=0`` and a class with neither prediction nor target (then
  :math:`L_c = 1`, as smp's clamp gives; with ``eps=0`` too, the ratio is
  taken as 0, still :math:`L_c = 1`); it never overrides a positive
  ``smooth`` (smp clamps any denominator below ``eps``: a difference only
  for denominators below ``eps``). https://arxiv.org/abs/1606.04797

  Library equivalences (integer labels, ``activation="softmax"``):

  * MONAI ``DiceLoss(softmax=True, to_onehot_y=True, batch=b, smooth_nr=s,
    smooth_dr=s, squared_pred=q, include_background=ib)``: ``smooth=s,
    per_image=not b, squared=q, include_background=ib, classes="all"``
    (MONAI's default ``s=1e-5``); same ``"none"`` values (without MONAI's
    trailing singleton axes) and ``"mean"``.
  * smp 0.6 ``DiceLoss("multiclass", smooth=s, eps=e, ignore_index=i)``:
    ``smooth=2*s, eps=e, ignore_index=i, per_image=False, classes="present",
    avg_factor=C`` (smp computes Dice as a Tversky index with
    ``alpha = beta = 0.5``, i.e. :math:`(I + s) / ((P + T)/2 + s)`, which
    doubles its smoothing; its default ``s=0`` is unaffected).

  Args:
    logits: ``[B, ..., C]`` logits (probabilities with ``activation=None``).
    labels: integer labels ``[B, ...]`` or dense targets ``[B, ..., C]``.
    activation: ``"softmax"``, ``"sigmoid"`` (independent channels) or ``None``.
    smooth: added to numerator and denominator (>= 0).
    eps: the denominator where it would be 0 (>= 0).
    ignore_index: label value whose pixels are removed.
    class_weight: ``[C]`` per-class weights of the mean.
    include_background: keep class 0.
    per_image: score each image (``[B, C']``) instead of the pooled batch.
    squared: squared terms in the denominator.
    classes: ``"all"`` or ``"present"`` (see the module docstring).
    weight, where, reduction, avg_factor, axis_name: see the module docstring
      and :func:`jaxloss.reduce_loss`; ``where`` masks pixels ``[B, ...]``.

  Returns:
    ``[C']`` (``per_image=False``) or ``[B, C']`` for ``reduction="none"``,
    else a scalar.
  """
  dropped = _region_checks(classes, logits, include_background, smooth, eps)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   squared=squared, axis_name=axis_name)
  loss = 1 - _ratio(2 * s.inter + smooth, s.pred + s.true + smooth, eps)
  return reduce_classes(loss, s.mass, classes=classes, class_weight=class_weight,
                        dropped=dropped, weight=weight, reduction=reduction,
                        avg_factor=avg_factor, axis_name=axis_name)


def jaccard_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
                 smooth: float = 1.0, eps: float = 1e-7, ignore_index: int | None = None,
                 class_weight: ArrayLike | None = None, include_background: bool = True,
                 per_image: bool = False, squared: bool = False, classes: str = "all",
                 weight=None, where=None, reduction: str = "mean", avg_factor=None,
                 axis_name=None) -> Array:
  r"""Soft Jaccard (IoU) loss per class (Rahman & Wang 2016).

  .. math::
     L_c = 1 - \frac{I_c + s}{U_c + s}, \qquad U_c = P_c + T_c - I_c,

  as smp's ``JaccardLoss`` (``smooth=s, eps=e, classes="present",
  avg_factor=C``) and MONAI's ``DiceLoss(jaccard=True)`` (``classes="all"``).
  Arguments (``eps`` only where the denominator is 0) and return shapes as
  :func:`dice_loss`. https://arxiv.org/abs/1911.08287
  """
  dropped = _region_checks(classes, logits, include_background, smooth, eps)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   squared=squared, axis_name=axis_name)
  union = s.pred + s.true - s.inter
  loss = 1 - _ratio(s.inter + smooth, union + smooth, eps)
  return reduce_classes(loss, s.mass, classes=classes, class_weight=class_weight,
                        dropped=dropped, weight=weight, reduction=reduction,
                        avg_factor=avg_factor, axis_name=axis_name)


def tversky_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 smooth: float = 1.0, eps: float = 1e-7, ignore_index: int | None = None,
                 class_weight: ArrayLike | None = None, include_background: bool = True,
                 per_image: bool = False, classes: str = "all", weight=None, where=None,
                 reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Tversky loss (Salehi et al. 2017) and focal Tversky loss (Abraham & Khan 2019).

  .. math::
     TI_c = \frac{I_c + s}{I_c + \alpha FP_c + \beta FN_c + s}, \quad
     FP_c = P_c - I_c, \quad FN_c = T_c - I_c, \quad L_c = (1 - TI_c)^{\gamma}.

  ``alpha`` weighs false positives, ``beta`` false negatives (raise ``beta``
  to favour recall of rare classes). ``alpha = beta = 0.5`` is
  :func:`dice_loss` with smoothing ``2s``; ``alpha = beta = 1`` is
  :func:`jaccard_loss`.

  ``gamma`` is applied to each class before averaging, as in the paper, with
  smp's exponent convention :math:`(1 - TI)^\gamma`: Abraham & Khan write
  :math:`(1 - TI)^{1/\gamma}`, so their :math:`\gamma = 4/3` is
  ``gamma=0.75`` here. (smp applies its ``gamma`` after the class mean.)
  MONAI ``TverskyLoss(alpha=a, beta=b, batch=b_, smooth_nr=s, smooth_dr=s)``
  is ``alpha=a, beta=b, per_image=not b_, smooth=s, classes="all"``.

  ``alpha``, ``beta`` and ``gamma`` must be >= 0. Arguments (``eps`` only
  where the denominator is 0) and return shapes as :func:`dice_loss` (no
  ``squared``). https://arxiv.org/abs/1706.05721, https://arxiv.org/abs/1810.07842
  """
  for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
    check_range(name, value, 0.0)
  dropped = _region_checks(classes, logits, include_background, smooth, eps)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   axis_name=axis_name)
  fp, fn = s.pred - s.inter, s.true - s.inter
  index = _ratio(s.inter + smooth, s.inter + alpha * fp + beta * fn + smooth, eps)
  loss = classification._safe_pow(jnp.maximum(1 - index, 0.0), gamma)
  return reduce_classes(loss, s.mass, classes=classes, class_weight=class_weight,
                        dropped=dropped, weight=weight, reduction=reduction,
                        avg_factor=avg_factor, axis_name=axis_name)


def _gdl_weights(mass: Array, weight_type: str, classes: str) -> Array:
  """Sudre's class weights; absent classes get the largest finite weight."""
  present = mass > 0
  safe = jnp.where(present, mass, 1.0)
  w = {"square": 1 / jnp.square(safe), "simple": 1 / safe,
       "uniform": jnp.ones_like(safe)}[weight_type]
  w = jnp.where(present, w, 0.0)
  if classes == "all":
    w = jnp.where(present, w, jnp.max(w, axis=-1, keepdims=True))
  return jax.lax.stop_gradient(w)


def generalized_dice_loss(logits: ArrayLike, labels: ArrayLike, *,
                          activation: str | None = "softmax", weight_type: str = "square",
                          smooth: float = 1e-5, eps: float = 1e-7,
                          ignore_index: int | None = None, include_background: bool = True,
                          per_image: bool = False, classes: str = "all", weight=None,
                          where=None, reduction: str = "mean", avg_factor=None,
                          axis_name=None) -> Array:
  r"""Generalized Dice loss (Sudre et al. 2017).

  .. math::
     L = 1 - \frac{2 \sum_c w_c I_c + s}{\sum_c w_c (P_c + T_c) + s},
     \qquad w_c = T_c^{-2}\ (\text{square}),\ T_c^{-1}\ (\text{simple}),\ 1\ (\text{uniform}).

  The weight of a class absent from the group (:math:`T_c = 0`, infinite) is
  the largest finite weight of the group with ``classes="all"`` (as MONAI),
  0 with ``classes="present"``; no NaN either way. ``smooth`` defaults to
  MONAI's 1e-5: the weighted sums are small (``~C / T_c``), so a smoothing
  of 1 would swamp them.

  MONAI ``GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=t,
  batch=b)`` is ``weight_type=t, per_image=not b`` with the defaults; with
  every class absent (all weights 0) the loss is :math:`1 - s / s = 0`, as
  MONAI's. ``eps`` acts only where the denominator is 0 (see :func:`dice_loss`).
  https://arxiv.org/abs/1707.03237

  Args:
    logits, labels, activation, eps, ignore_index, include_background,
      per_image, where: as :func:`dice_loss`.
    weight_type: ``"square"``, ``"simple"`` or ``"uniform"``.
    smooth: added to numerator and denominator.
    classes: weight of absent classes, see above.
    weight, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[]`` (``per_image=False``) or ``[B]`` for ``reduction="none"``, else a
    scalar.
  """
  check_choice("weight_type", weight_type, WEIGHT_TYPES)
  _region_checks(classes, logits, True, smooth, eps)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   axis_name=axis_name)
  w = _gdl_weights(s.mass, weight_type, classes)
  num = 2 * jnp.sum(w * s.inter, axis=-1) + smooth
  den = jnp.sum(w * (s.pred + s.true), axis=-1) + smooth
  loss = 1 - _ratio(num, den, eps)
  return reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)


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
                        weight=None, where=None, reduction: str = "mean", avg_factor=None,
                        axis_name=None) -> Array:
  r"""Lovász-Softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018).

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
    probs, targets, valid = (_groups(x, 1) for x in (probs, targets, valid))
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
                      reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Lovász hinge loss for binary segmentation (Berman et al., CVPR 2018).

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
  group = lambda x: _groups(x[..., None], labels.shape[0] if per_image else 1)
  fg = group((labels == 1) & valid).astype(jnp.float32)
  v = group(valid).astype(jnp.float32)
  errors = jax.nn.relu(1 - group(logits) * (2 * fg - 1))
  loss = _lovasz_extension(errors, fg, v)[:, 0]
  counted = jnp.any(v[..., 0] > 0, axis=1)
  if not per_image:
    loss, counted = loss[0], counted[0]
  return reduce_loss(loss, weight=weight, where=counted, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def mask_loss(logits: ArrayLike, masks: ArrayLike, *, pos_weight: ArrayLike | None = None,
              weight=None, where=None, reduction: str = "mean", avg_factor=None,
              axis_name=None) -> Array:
  r"""Binary cross entropy of instance mask logits (Mask R-CNN's mask loss).

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
  return classification.binary_cross_entropy(
      logits, masks, pos_weight=pos_weight, weight=weight, where=where, reduction=reduction,
      avg_factor=avg_factor, axis_name=axis_name)


def _check_scalar_reduction(reduction: str, name: str) -> None:
  if reduction not in ("mean", "sum"):
    raise ValueError(f"{name} returns a scalar: reduction must be 'mean' or 'sum' (of its "
                     f"pixelwise term), got {reduction!r}.")


def combined_segmentation_loss(logits: ArrayLike, labels: ArrayLike, *, ce_weight: float = 1.0,
                               dice_weight: float = 1.0, class_weight: ArrayLike | None = None,
                               ignore_index: int | None = None, dice_smooth: float = 1.0,
                               weight=None, where=None, reduction: str = "mean",
                               avg_factor=None, axis_name=None) -> Array:
  r"""Cross entropy plus soft Dice, the usual recipe for imbalanced segmentation.

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
  _check_scalar_reduction(reduction, "combined_segmentation_loss")
  ce = classification.cross_entropy(logits, labels, class_weight=class_weight,
                                     ignore_index=ignore_index, weight=weight, where=where,
                                     reduction=reduction, avg_factor=avg_factor,
                                     axis_name=axis_name)
  dice = dice_loss(logits, labels, smooth=dice_smooth, class_weight=class_weight,
                   ignore_index=ignore_index, where=where, axis_name=axis_name)
  return ce_weight * ce + dice_weight * dice


def focal_dice_loss(logits: ArrayLike, labels: ArrayLike, *, focal_gamma: float = 2.0,
                    focal_weight: float = 0.5, dice_weight: float = 0.5,
                    dice_smooth: float = 1.0, class_weight: ArrayLike | None = None,
                    ignore_index: int | None = None, weight=None, where=None,
                    reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Softmax focal loss plus soft Dice.

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
    weight: per-pixel weight ``[B, ...]`` of the focal term.
    where: boolean pixel mask ``[B, ...]``.
    reduction: ``"mean"`` or ``"sum"``, of the focal term (the Dice term is
      always its class mean).
    avg_factor: divisor of the focal term's ``"mean"``.
    axis_name: mapped axis for data parallelism.

  Returns:
    A scalar.
  """
  _check_scalar_reduction(reduction, "focal_dice_loss")
  focal = classification.softmax_focal_loss(logits, labels, gamma=focal_gamma,
                                            alpha=class_weight, ignore_index=ignore_index,
                                            weight=weight, where=where, reduction=reduction,
                                            avg_factor=avg_factor, axis_name=axis_name)
  dice = dice_loss(logits, labels, smooth=dice_smooth, class_weight=class_weight,
                   ignore_index=ignore_index, where=where, axis_name=axis_name)
  return focal_weight * focal + dice_weight * dice


# ----------------------------------------------------------------------------- quick reference

QUICK_REFERENCE = ("ce", "weighted_ce", "focal", "dice", "focal_dice", "tversky")


def _quick_class_weight(logits, labels, num_classes, ignore_index, use_class_weighting,
                        axis_name=None):
  found = jnp.shape(logits)[-1]
  if num_classes is not None and num_classes != found:
    raise ValueError(f"num_classes={num_classes} but the logits have {found} classes.")
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
    common = dict(ignore_index=ignore_index, where=where, axis_name=axis_name)
    if kind in ("ce", "weighted_ce"):
      return classification.cross_entropy(logits, labels, class_weight=cw, **common)
    if kind == "focal":
      return classification.softmax_focal_loss(logits, labels, gamma=focal_gamma, alpha=cw,
                                               **common)
    if kind == "dice":
      return dice_loss(logits, labels, smooth=dice_smooth, class_weight=cw, **common)
    if kind == "tversky":
      return tversky_loss(logits, labels, alpha=tversky_alpha, beta=tversky_beta,
                          smooth=dice_smooth, class_weight=cw, **common)
    return focal_dice_loss(logits, labels, focal_gamma=focal_gamma, focal_weight=focal_weight,
                           dice_weight=dice_weight, dice_smooth=dice_smooth, class_weight=cw,
                           **common)

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
