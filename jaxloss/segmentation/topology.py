r"""Topology-aware segmentation losses: soft skeleton and clDice.

clDice (Shit et al., CVPR 2021, https://arxiv.org/abs/2003.07311) scores how
much of each skeleton lies inside the other mask: thin tubular structures
(vessels, ER, neurites) whose connectivity a pixel-wise loss barely sees.
Inputs as :func:`jaxloss.dice_loss`: logits ``[B, ..., C]`` (any number of
spatial axes; 2-D and 3-D as MONAI), integer labels ``[B, ...]`` or dense
targets ``[B, ..., C]``. Everything has static shapes: the skeleton is a fixed
number of ``reduce_window`` min/max pools.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._src.checks import check_range
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.segmentation.region import dice_loss, probs_and_targets


def _pool(x: Array, op, init: float, window: tuple[int, ...]) -> Array:
  """Stride-1 ``op`` pool of ``x`` over ``window`` (odd sizes), padded with ``init``:
  positions outside the image never win, as torch's ``max_pool`` padding."""
  pad = tuple((w // 2, w // 2) for w in window)
  # a NumPy (concrete) init: reduce_window then lowers to its differentiable min/max form
  return jax.lax.reduce_window(x, np.asarray(init, x.dtype), op, window, (1,) * x.ndim, pad)


def _windows(ndim: int, size: int, axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(size if a in axes else 1 for a in range(ndim))


def _erode(x: Array, spatial: tuple[int, ...]) -> Array:
  """Soft erosion: the minimum over the cross of the 3-neighbours along each axis."""
  pools = [_pool(x, jax.lax.min, jnp.inf, _windows(x.ndim, 3, (a,))) for a in spatial]
  out = pools[0]
  for p in pools[1:]:
    out = jnp.minimum(out, p)
  return out


def _dilate(x: Array, spatial: tuple[int, ...]) -> Array:
  """Soft dilation: the maximum over the ``3 x ... x 3`` box."""
  return _pool(x, jax.lax.max, -jnp.inf, _windows(x.ndim, 3, spatial))


def _check_iters(iters) -> None:
  if isinstance(iters, bool) or not isinstance(iters, int):
    raise TypeError(f"`iters` must be a Python int (a static number of erosions), got "
                    f"{type(iters).__name__}.")
  if iters < 0:
    raise ValueError(f"`iters` must be >= 0, got {iters}.")


def soft_skeleton(probs: ArrayLike, *, iters: int = 3) -> Array:
  r"""Soft morphological skeleton (Shit et al., CVPR 2021).

  With soft erosion :math:`E` (min over the axis-aligned 3-neighbours), soft
  dilation :math:`D` (max over the 3-box) and opening :math:`O = D \circ E`,

  .. math::
     S_0 = \mathrm{relu}(x - O(x)), \quad
     S_{k} = S_{k-1} + \mathrm{relu}(\delta_k - S_{k-1} \delta_k), \quad
     \delta_k = \mathrm{relu}(E^k(x) - O(E^k(x))),

  for :math:`k = 1, \dots,` ``iters``. Pools never reach outside the image
  (padding never wins), as MONAI's ``soft_skel``. https://arxiv.org/abs/2003.07311

  Args:
    probs: ``[B, ..., C]`` probabilities (channels-last; any number of spatial
      axes between batch and channel).
    iters: number of erosions (a static Python int >= 0).

  Returns:
    The soft skeleton, same shape, at least float32.
  """
  _check_iters(iters)
  x = as_float(probs)
  if x.ndim < 3:
    raise ValueError(f"probs must be [B, ..., C] with at least one spatial axis, got shape "
                     f"{x.shape}.")
  spatial = tuple(range(1, x.ndim - 1))
  relu = jax.nn.relu

  def step(_, carry):
    x, skel = carry
    x = _erode(x, spatial)
    delta = relu(x - _dilate(_erode(x, spatial), spatial))
    return x, skel + relu(delta - skel * delta)

  # A loop (a scan, static trip count): compile time does not grow with `iters`.
  _, skel = jax.lax.fori_loop(0, iters, step, (x, relu(x - _dilate(_erode(x, spatial), spatial))))
  return skel


def probs_and_target_maps(logits, labels, *, activation, ignore_index, where,
                          include_background):
  """Probabilities and targets ``[B, ..., C']``, zero at removed pixels."""
  logits = jnp.asarray(logits)
  probs, targets, _ = probs_and_targets(
      logits, labels, activation=activation, ignore_index=ignore_index, where=where)
  shape = logits.shape
  probs, targets = probs.reshape(shape), targets.reshape(shape)
  if not include_background and shape[-1] > 1:
    probs, targets = probs[..., 1:], targets[..., 1:]
  return probs, targets


def _cldice_per_image(probs, targets, *, iters, smooth, eps) -> Array:
  """``1 - clDice`` per image ``[B]``, pooled over space and classes as MONAI."""
  axes = tuple(range(1, probs.ndim))
  skel_pred = soft_skeleton(probs, iters=iters)
  skel_true = soft_skeleton(targets, iters=iters)
  tprec = (jnp.sum(skel_pred * targets, axes) + smooth) / (jnp.sum(skel_pred, axes) + smooth)
  tsens = (jnp.sum(skel_true * probs, axes) + smooth) / (jnp.sum(skel_true, axes) + smooth)
  return 1 - 2 * tprec * tsens / (tprec + tsens + eps)


def _checks(iters, smooth, eps) -> None:
  _check_iters(iters)
  check_range("smooth", smooth, 0.0, low_open=True,
              hint=" It keeps the precision and sensitivity ratios finite: e.g. 1.0.")
  check_range("eps", eps, 0.0, low_open=True,
              hint=" It keeps the harmonic mean finite: e.g. 1e-4.")


def cldice_loss(logits: ArrayLike, labels: ArrayLike, *, activation: str | None = "softmax",
                iters: int = 3, smooth: float = 1.0, eps: float = 1e-4,
                include_background: bool = True, ignore_index: int | None = None,
                weight=None, where=None, reduction: Reduction = "mean", avg_factor=None,
                axis_name=None) -> Array:
  r"""Soft clDice loss per image (Shit et al., CVPR 2021).

  With :math:`S_P`, :math:`S_T` the soft skeletons (:func:`soft_skeleton`) of
  the probabilities :math:`P` and targets :math:`T`, sums over the space and
  the classes of one image,

  .. math::
     \mathrm{Tprec} = \frac{\sum S_P T + s}{\sum S_P + s}, \quad
     \mathrm{Tsens} = \frac{\sum S_T P + s}{\sum S_T + s}, \quad
     L = 1 - \frac{2\,\mathrm{Tprec}\,\mathrm{Tsens}}{\mathrm{Tprec} + \mathrm{Tsens} + \epsilon}.

  Matches MONAI 1.6 ``SoftclDiceLoss(iter_=iters, smooth_nr=s, smooth_dr=s,
  smooth=eps, include_background=ib, softmax=True, to_onehot_y=True)`` with
  ``activation="softmax"`` (``sigmoid=True``: ``"sigmoid"``; neither:
  ``None``), its ``"none"`` values ``[B]`` included.
  https://arxiv.org/abs/2003.07311

  Removed pixels (``ignore_index``, ``where``) are background in both maps
  (probability and target 0) and receive no gradient; as the skeleton is a
  neighbourhood operation they still shape their neighbours' skeletons.

  Args:
    logits: ``[B, ..., C]`` logits (probabilities with ``activation=None``).
    labels: integer labels ``[B, ...]`` or dense targets ``[B, ..., C]``.
    activation: ``"softmax"``, ``"sigmoid"`` or ``None``.
    iters: skeleton erosions (static int >= 0).
    smooth: added to numerators and denominators of both ratios (> 0).
    eps: added to the harmonic mean's denominator (> 0; MONAI's ``smooth``).
    include_background: keep class 0 (dropped after the softmax).
    ignore_index: label value whose pixels are removed.
    weight, where, reduction, avg_factor, axis_name: see
      :func:`jaxloss.reduce_loss`; ``weight`` is per image ``[B]``, ``where``
      a pixel mask ``[B, ...]``.

  Returns:
    ``[B]`` for ``reduction="none"``, else a scalar.
  """
  _checks(iters, smooth, eps)
  probs, targets = probs_and_target_maps(logits, labels, activation=activation,
                                         ignore_index=ignore_index, where=where,
                                         include_background=include_background)
  loss = _cldice_per_image(probs, targets, iters=iters, smooth=smooth, eps=eps)
  return reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)


def dice_cldice_loss(logits: ArrayLike, labels: ArrayLike, *, alpha: float = 0.5,
                     activation: str | None = "softmax", iters: int = 3, smooth: float = 1.0,
                     eps: float = 1e-4, include_background: bool = True,
                     ignore_index: int | None = None, weight=None, where=None,
                     reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Dice plus clDice, :math:`(1 - \alpha) L_\mathrm{dice} + \alpha L_\mathrm{clDice}`.

  :math:`L_\mathrm{dice}` is the per-image Dice of :func:`jaxloss.dice_loss`
  (``per_image=True``, ``classes="all"``, smoothing ``smooth``) averaged over
  the classes of each image, :math:`L_\mathrm{clDice}` is :func:`cldice_loss`.
  Matches MONAI 1.6 ``SoftDiceclDiceLoss(iter_=iters, alpha=alpha,
  smooth_nr=s, smooth_dr=s, smooth=eps, ...)`` for ``"mean"``. MONAI's
  ``"sum"`` adds the Dice of every image and class (``C'`` times this
  ``"sum"``'s Dice part) and its ``"none"`` broadcasts a ``[B, C, 1, 1]`` Dice
  against a ``[B]`` clDice; here ``"none"`` is the per-image loss ``[B]`` and
  ``"sum"`` its sum. https://arxiv.org/abs/2003.07311

  Args:
    logits, labels, activation, iters, smooth, eps, include_background,
      ignore_index: as :func:`cldice_loss`.
    alpha: weight of the clDice term, in ``[0, 1]``.
    weight, where, reduction, avg_factor, axis_name: as :func:`cldice_loss`.

  Returns:
    ``[B]`` for ``reduction="none"``, else a scalar.
  """
  _checks(iters, smooth, eps)
  check_range("alpha", alpha, 0.0, 1.0)
  dice = dice_loss(logits, labels, activation=activation, smooth=smooth,
                                ignore_index=ignore_index, include_background=include_background,
                                per_image=True, where=where, reduction="none")
  probs, targets = probs_and_target_maps(logits, labels, activation=activation,
                                         ignore_index=ignore_index, where=where,
                                         include_background=include_background)
  cl = _cldice_per_image(probs, targets, iters=iters, smooth=smooth, eps=eps)
  loss = (1 - alpha) * jnp.mean(dice, axis=-1) + alpha * cl
  return reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor,
                     axis_name=axis_name)
