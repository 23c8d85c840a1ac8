r"""Region (overlap) losses of segmentation: Dice, Jaccard, Tversky and generalized Dice.

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
  ``None`` they are background (an all-zero target row). A
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
* ``smooth_nr`` / ``smooth_dr`` (MONAI's names) replace ``smooth`` in the
  numerator / denominator; each defaults to ``smooth``. ``smooth_nr > 0`` with
  ``smooth_dr = 0`` is refused: a class with neither prediction nor target
  would score :math:`s_{nr} / 0` (MONAI returns ``-inf`` there).
* ``soft_label=True`` (MONAI >= 1.4) scores soft (non-binary) targets with the
  fuzzy intersection :math:`I_c = \sum_i \min(p_{ic}, t_{ic}) =
  \tfrac12 \sum_i (p_{ic} + t_{ic} - |p_{ic} - t_{ic}|)`, so that a prediction
  equal to its target scores 0 loss (up to smoothing); :math:`\sum p t` does
  not (Wang & Blaschko, https://arxiv.org/abs/2303.16296). For ``p, t`` in
  ``[0, 1]`` with binary targets (integer labels) both forms are equal. With
  ``squared=True`` MONAI's L2 form is :math:`\sum p t` either way.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._src import kernels
from jaxloss._src.checks import check_choice, check_class_weight, check_range, check_static
from jaxloss._src.labels import canonical_labels, sigmoid_targets, valid_labels
from jaxloss._src.numerics import as_float, divide_or_eps, safe_pow
from jaxloss._src.reduce import align, broadcast_mask, combine_masks, fill_masked, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction

__all__ = ["ACTIVATIONS", "CLASS_CHOICES", "WEIGHT_TYPES", "RegionStats", "activate",
           "dice_loss", "generalized_dice_loss", "group_pixels", "jaccard_loss",
           "probs_and_targets",
           "reduce_classes", "region_stats", "tversky_loss", "valid_pixels"]


ACTIVATIONS = ("softmax", "sigmoid", None)


CLASS_CHOICES = ("all", "present")


WEIGHT_TYPES = ("square", "simple", "uniform")


def valid_pixels(labels: Array, ignore_index: int | None, where: ArrayLike | None,
                 num_classes: int | None = None) -> Array | None:
  """Boolean mask of the pixels that count (``None``: all).

  With ``num_classes`` (softmax losses) labels outside ``[0, C)`` do not count
  either, as in :func:`jaxloss.cross_entropy`.
  """
  return combine_masks(valid_labels(labels, ignore_index, num_classes),
                       broadcast_mask(where, labels.shape))


def _targets(labels: Array, num_classes: int) -> Array:
  """One-hot targets ``[..., C]`` (background rows); binary reading when ``C == 1``."""
  return sigmoid_targets(labels, num_classes)


def group_pixels(x: Array, batch: int) -> Array:
  """``[B, ..., K]`` as ``[batch, N, K]``, ``batch`` ``B`` or 1 (explicit ``N``: a
  reshape to ``-1`` of an empty batch is ambiguous)."""
  pixels = math.prod(x.shape[:-1])
  n = pixels // batch if batch else math.prod(x.shape[1:-1])
  return x.reshape(batch, n, x.shape[-1])


def activate(logits: Array, activation: str | None) -> Array:
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
  probs = activate(fill_masked(logits, valid), activation)
  v = valid.astype(probs.dtype)[..., None]
  flat = lambda x: group_pixels(x, logits.shape[0])
  targets = fill_masked(targets.astype(probs.dtype), valid)
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
  flat = lambda x: group_pixels(x[..., None], logits.shape[0])[..., 0]
  inter, pred, true = kernels.softmax_region_stats(
      group_pixels(logits, logits.shape[0]), flat(labels),
      None if valid is None else flat(valid), squared=squared)
  return RegionStats(inter=inter, pred=pred, true=true, mass=true)


def _dense_stats(logits, labels, *, activation, ignore_index, where, squared,
                 soft_label) -> RegionStats:
  """Per-image :math:`I, P, T` ``[B, C]`` from probabilities and dense targets."""
  probs, targets, _ = probs_and_targets(logits, labels, activation=activation,
                                        ignore_index=ignore_index, where=where)
  power = jnp.square if squared else (lambda x: x)
  # min(p, t) = (p + t - |p - t|) / 2 pixel by pixel: MONAI's norm form without its
  # cancellation (a difference of the pooled sums).
  meet = jnp.minimum(probs, targets) if soft_label and not squared else probs * targets
  return RegionStats(
      inter=jnp.sum(meet, axis=1),
      pred=jnp.sum(power(probs), axis=1),
      true=jnp.sum(power(targets), axis=1),
      mass=jnp.sum(targets, axis=1))


def region_stats(logits, labels, *, activation, ignore_index, where, include_background,
                 per_image, squared=False, soft_label=False, axis_name=None) -> RegionStats:
  r"""Pools :math:`I, P, T` per class (see the module docstring).

  ``soft_label`` takes :math:`I = \sum \min(p, t)` (equal to :math:`\sum p t`
  against integer labels, which therefore ignore it). The softmax against integer labels
  runs the one-hot free kernel
  :func:`jaxloss._src.kernels.softmax_region_stats` on CPU (plain autodiff inside
  ``jaxloss.fused_kernels(False)`` and on other backends, where it is faster:
  :func:`jaxloss._src.kernels.region_kernel_pays`).
  """
  if (_softmax_labels(logits, labels, activation) and kernels.fused_enabled()
      and kernels.region_kernel_pays()):
    stats = _softmax_label_stats(logits, labels, ignore_index=ignore_index, where=where,
                                 squared=squared)
  else:
    soft = soft_label and jnp.shape(labels) == jnp.shape(logits)
    stats = _dense_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                         where=where, squared=squared, soft_label=soft)
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
  check_class_weight(class_weight)
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
                   eps=0.0, soft_label: bool = False) -> bool:
  """Validates ``classes``, ``smooth`` and ``eps``; returns whether class 0 is dropped."""
  check_choice("classes", classes, CLASS_CHOICES)
  check_range("smooth", smooth, 0.0)
  check_range("eps", eps, 0.0)
  check_static("soft_label", soft_label, "it selects the intersection's formula")
  return not include_background and jnp.shape(logits)[-1] > 1


def _smoothing(smooth, smooth_nr=None, smooth_dr=None) -> tuple:
  """MONAI's numerator and denominator smoothing, each ``smooth`` unless given (>= 0).

  ``smooth_nr > 0`` with ``smooth_dr == 0`` raises ``ValueError`` (both known at
  trace time): a class with neither prediction nor target would score ``nr / 0``.
  """
  nr = smooth if smooth_nr is None else smooth_nr
  dr = smooth if smooth_dr is None else smooth_dr
  check_range("smooth_nr", nr, 0.0)
  check_range("smooth_dr", dr, 0.0)
  if isinstance(nr, (int, float)) and isinstance(dr, (int, float)) and dr == 0 < nr:
    raise ValueError(
        f"smooth_nr={nr!r} with smooth_dr=0 divides by zero for a class with neither "
        "prediction nor target (MONAI returns -inf there); pass smooth_dr > 0 (e.g. "
        "smooth_dr=1e-5) or smooth_nr=0.")
  return nr, dr


def dice_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
              smooth: float = 1.0, smooth_nr: float | None = None,
              smooth_dr: float | None = None, soft_label: bool = False, eps: float = 1e-7,
              ignore_index: int | None = None, class_weight: ArrayLike | None = None,
              include_background: bool = True, per_image: bool = False, squared: bool = False,
              classes: str = "all", weight=None, where=None, reduction: Reduction = "mean",
              avg_factor=None, axis_name=None) -> Array:
  r"""Soft Dice loss per class (Milletari et al., V-Net, 2016).

  .. math::
     L_c = 1 - \frac{2 I_c + s_{nr}}{P_c + T_c + s_{dr}}

  (:math:`s_{nr} = s_{dr} = s` = ``smooth`` unless ``smooth_nr`` / ``smooth_dr``
  are given), with ``squared=True`` using :math:`\sum p^2` and :math:`\sum t^2` in the
  denominator (V-Net). ``eps`` replaces the denominator only where it is 0,
  i.e. ``smooth=0`` and a class with neither prediction nor target (then
  :math:`L_c = 1`, as smp's clamp gives; with ``eps=0`` too, the ratio is
  taken as 0, still :math:`L_c = 1`); it never overrides a positive
  ``smooth`` (smp clamps any denominator below ``eps``: a difference only
  for denominators below ``eps``). https://arxiv.org/abs/1606.04797

  Library equivalences (integer labels, ``activation="softmax"``):

  * MONAI ``DiceLoss(softmax=True, to_onehot_y=True, batch=b, smooth_nr=n,
    smooth_dr=d, squared_pred=q, include_background=ib, soft_label=sl)``:
    ``smooth_nr=n, smooth_dr=d, per_image=not b, squared=q,
    include_background=ib, soft_label=sl, classes="all"`` (MONAI's default
    ``n = d = 1e-5``); same ``"none"`` values (without MONAI's trailing
    singleton axes) and ``"mean"``. ``soft_label`` matters only for dense
    soft targets (see the module docstring).
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
    smooth_nr, smooth_dr: added to the numerator / denominator instead of
      ``smooth`` (MONAI's names); ``None``: ``smooth``.
    soft_label: intersection :math:`\sum \min(p, t)` for soft targets (MONAI's
      ``soft_label``; see the module docstring).
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
  dropped = _region_checks(classes, logits, include_background, smooth, eps, soft_label)
  nr, dr = _smoothing(smooth, smooth_nr, smooth_dr)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   squared=squared, soft_label=soft_label, axis_name=axis_name)
  loss = 1 - divide_or_eps(2 * s.inter + nr, s.pred + s.true + dr, eps)
  return reduce_classes(loss, s.mass, classes=classes, class_weight=class_weight,
                        dropped=dropped, weight=weight, reduction=reduction,
                        avg_factor=avg_factor, axis_name=axis_name)


def jaccard_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
                 smooth: float = 1.0, smooth_nr: float | None = None,
                 smooth_dr: float | None = None, soft_label: bool = False, eps: float = 1e-7,
                 ignore_index: int | None = None, class_weight: ArrayLike | None = None,
                 include_background: bool = True, per_image: bool = False,
                 squared: bool = False, classes: str = "all", weight=None, where=None,
                 reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Soft Jaccard (IoU) loss per class (Rahman & Wang 2016).

  .. math::
     L_c = 1 - \frac{I_c + s_{nr}}{U_c + s_{dr}}, \qquad U_c = P_c + T_c - I_c,

  as smp's ``JaccardLoss`` (``smooth=s, eps=e, classes="present",
  avg_factor=C``) and MONAI's ``DiceLoss(jaccard=True, smooth_nr=n, smooth_dr=d,
  soft_label=sl)``: ``smooth_nr=n/2, smooth_dr=d/2, soft_label=sl, classes="all"``
  (MONAI computes :math:`1 - (2I + n) / (2U + d)`, halving its smoothing).
  Arguments (``eps`` only where the denominator is 0) and return shapes as
  :func:`dice_loss`. https://arxiv.org/abs/1911.08287
  """
  dropped = _region_checks(classes, logits, include_background, smooth, eps, soft_label)
  nr, dr = _smoothing(smooth, smooth_nr, smooth_dr)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   squared=squared, soft_label=soft_label, axis_name=axis_name)
  union = s.pred + s.true - s.inter
  loss = 1 - divide_or_eps(s.inter + nr, union + dr, eps)
  return reduce_classes(loss, s.mass, classes=classes, class_weight=class_weight,
                        dropped=dropped, weight=weight, reduction=reduction,
                        avg_factor=avg_factor, axis_name=axis_name)


def tversky_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 smooth: float = 1.0, smooth_nr: float | None = None,
                 smooth_dr: float | None = None, soft_label: bool = False, eps: float = 1e-7,
                 ignore_index: int | None = None, class_weight: ArrayLike | None = None,
                 include_background: bool = True, per_image: bool = False,
                 classes: str = "all", weight=None, where=None,
                 reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Tversky loss (Salehi et al. 2017) and focal Tversky loss (Abraham & Khan 2019).

  .. math::
     TI_c = \frac{I_c + s_{nr}}{I_c + \alpha FP_c + \beta FN_c + s_{dr}}, \quad
     FP_c = P_c - I_c, \quad FN_c = T_c - I_c, \quad L_c = (1 - TI_c)^{\gamma}.

  ``alpha`` weighs false positives, ``beta`` false negatives (raise ``beta``
  to favour recall of rare classes). ``alpha = beta = 0.5`` is
  :func:`dice_loss` with smoothing ``2s``; ``alpha = beta = 1`` is
  :func:`jaccard_loss`.

  ``gamma`` is applied to each class before averaging, as in the paper, with
  smp's exponent convention :math:`(1 - TI)^\gamma`: Abraham & Khan write
  :math:`(1 - TI)^{1/\gamma}`, so their :math:`\gamma = 4/3` is
  ``gamma=0.75`` here. (smp applies its ``gamma`` after the class mean.)
  MONAI ``TverskyLoss(alpha=a, beta=b, batch=b_, smooth_nr=n, smooth_dr=d,
  soft_label=sl)`` is ``alpha=a, beta=b, per_image=not b_, smooth_nr=n,
  smooth_dr=d, soft_label=sl, classes="all"`` (MONAI's
  :math:`\sum p (1 - t)` is :math:`P - I` for any targets).

  ``alpha``, ``beta`` and ``gamma`` must be >= 0. Arguments (``smooth_nr``,
  ``smooth_dr``, ``soft_label``; ``eps`` only
  where the denominator is 0) and return shapes as :func:`dice_loss` (no
  ``squared``). https://arxiv.org/abs/1706.05721, https://arxiv.org/abs/1810.07842
  """
  check_static("gamma", gamma, "an integer exponent is computed by multiplications")
  for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
    check_range(name, value, 0.0)
  dropped = _region_checks(classes, logits, include_background, smooth, eps, soft_label)
  nr, dr = _smoothing(smooth, smooth_nr, smooth_dr)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   soft_label=soft_label, axis_name=axis_name)
  fp, fn = s.pred - s.inter, s.true - s.inter
  index = divide_or_eps(s.inter + nr, s.inter + alpha * fp + beta * fn + dr, eps)
  loss = safe_pow(jnp.maximum(1 - index, 0.0), gamma)
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
                          smooth: float = 1e-5, smooth_nr: float | None = None,
                          smooth_dr: float | None = None, soft_label: bool = False,
                          eps: float = 1e-7, ignore_index: int | None = None,
                          include_background: bool = True,
                          per_image: bool = False, classes: str = "all", weight=None,
                          where=None, reduction: Reduction = "mean", avg_factor=None,
                          axis_name=None) -> Array:
  r"""Generalized Dice loss (Sudre et al. 2017).

  .. math::
     L = 1 - \frac{2 \sum_c w_c I_c + s_{nr}}{\sum_c w_c (P_c + T_c) + s_{dr}},
     \qquad w_c = T_c^{-2}\ (\text{square}),\ T_c^{-1}\ (\text{simple}),\ 1\ (\text{uniform}).

  The weight of a class absent from the group (:math:`T_c = 0`, infinite) is
  the largest finite weight of the group with ``classes="all"`` (as MONAI),
  0 with ``classes="present"``; no NaN either way. ``smooth`` defaults to
  MONAI's 1e-5: the weighted sums are small (``~C / T_c``), so a smoothing
  of 1 would swamp them.

  MONAI ``GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=t,
  batch=b, smooth_nr=n, smooth_dr=d, soft_label=sl)`` is ``weight_type=t,
  per_image=not b, smooth_nr=n, smooth_dr=d, soft_label=sl`` (MONAI adds its
  smoothing once, after the class sums, as here); with every class absent
  (all weights 0) the loss is :math:`1 - s_{nr} / s_{dr}`, 0 for equal
  smoothing, as MONAI's. ``eps`` acts only where the denominator is 0 (see :func:`dice_loss`).
  https://arxiv.org/abs/1707.03237

  Args:
    logits, labels, activation, eps, ignore_index, include_background,
      per_image, where: as :func:`dice_loss`.
    weight_type: ``"square"``, ``"simple"`` or ``"uniform"``.
    smooth: added to numerator and denominator.
    smooth_nr, smooth_dr, soft_label: as :func:`dice_loss`.
    classes: weight of absent classes, see above.
    weight, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[]`` (``per_image=False``) or ``[B]`` for ``reduction="none"``, else a
    scalar.
  """
  check_choice("weight_type", weight_type, WEIGHT_TYPES)
  _region_checks(classes, logits, True, smooth, eps, soft_label)
  nr, dr = _smoothing(smooth, smooth_nr, smooth_dr)
  s = region_stats(logits, labels, activation=activation, ignore_index=ignore_index,
                   where=where, include_background=include_background, per_image=per_image,
                   soft_label=soft_label, axis_name=axis_name)
  w = _gdl_weights(s.mass, weight_type, classes)
  num = 2 * jnp.sum(w * s.inter, axis=-1) + nr
  den = jnp.sum(w * (s.pred + s.true), axis=-1) + dr
  loss = 1 - divide_or_eps(num, den, eps)
  return reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)
