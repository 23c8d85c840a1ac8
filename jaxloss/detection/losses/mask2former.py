r"""Mask2Former's set criterion: point-sampled mask matching and losses.

Mask2Former (Cheng et al. 2022, https://arxiv.org/abs/2112.01527) matches
queries to ground-truth masks on a few thousand sampled points instead of
whole masks, and scores the matched masks on importance-sampled points
(PointRend, Kirillov et al. 2020, https://arxiv.org/abs/1912.08193), so that
memory grows with ``Q x M x P``, never with ``Q x M x H x W``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss._src.checks import check_targets_mask
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import fill_masked
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.classification import binary_cross_entropy, cross_entropy
from jaxloss.detection.losses.detr import matched_classes, num_targets
from jaxloss.detection.matching.hungarian import hungarian_matching


def _corners(size: int, coord: Array) -> tuple[Array, Array, Array, Array]:
  """Lower/upper neighbour indices and weights along one axis; weight 0 outside the map."""
  pixel = coord * size - 0.5          # align_corners=False
  low = jnp.floor(pixel)
  frac = pixel - low
  low = low.astype(jnp.int32)
  high = low + 1
  w_low = jnp.where((low >= 0) & (low < size), 1 - frac, 0)
  w_high = jnp.where((high >= 0) & (high < size), frac, 0)
  return jnp.clip(low, 0, size - 1), jnp.clip(high, 0, size - 1), w_low, w_high


def _sample_one(maps: Array, coords: Array) -> Array:
  """``maps [H, W, C]`` at ``coords [P, 2]`` -> ``[P, C]``."""
  h, w, c = maps.shape
  x0, x1, wx0, wx1 = _corners(w, coords[:, 0])
  y0, y1, wy0, wy1 = _corners(h, coords[:, 1])
  flat = maps.reshape(h * w, c)
  out = jnp.zeros((coords.shape[0], c), flat.dtype)
  for yi, wy in ((y0, wy0), (y1, wy1)):
    for xi, wx in ((x0, wx0), (x1, wx1)):
      out = out + (wy * wx)[:, None] * flat[yi * w + xi]
  return out


def point_sample(maps: ArrayLike, coords: ArrayLike) -> Array:
  r"""Bilinear samples of channels-last maps at normalised points.
  https://arxiv.org/abs/1912.08193

  As detectron2's ``point_sample`` (``grid_sample`` with ``align_corners=False``
  and zero padding) in channels-last layout: point :math:`(x, y) \in [0, 1]^2`
  is pixel :math:`(xW - 0.5, yH - 0.5)`, interpolated between its four
  neighbours, a neighbour outside the map counting as 0.

  Args:
    maps: ``[N, H, W, C]``.
    coords: ``[N, P, 2]``, x then y, in ``[0, 1]``.

  Returns:
    ``[N, P, C]`` (float32 for low-precision maps).
  """
  maps, coords = as_float(maps), as_float(coords)
  if (maps.ndim != 4 or coords.ndim != 3 or coords.shape[-1] != 2
      or coords.shape[0] != maps.shape[0]):
    raise ValueError(f"point_sample takes `maps` [N, H, W, C] and `coords` [N, P, 2] (x, y), got "
                     f"{maps.shape} and {coords.shape}.")
  return jax.vmap(_sample_one)(maps, coords.astype(maps.dtype))


def uncertain_point_coords(key: Array, logits: ArrayLike, *, num_points: int,
                           oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> Array:
  r"""PointRend's importance sampling of the most uncertain points of mask logits.
  https://arxiv.org/abs/1912.08193

  Draws ``int(num_points * oversample_ratio)`` uniform points per mask, keeps
  the ``int(importance_sample_ratio * num_points)`` whose sampled logit is
  nearest 0 (uncertainty :math:`-|x|`, Mask2Former's ``calculate_uncertainty``)
  and fills up to ``num_points`` with fresh uniform points, as detectron2's
  ``get_uncertain_point_coords_with_randomness``. No gradient flows through it.

  Args:
    key: a PRNG key.
    logits: ``[N, H, W]`` mask logits.
    num_points: points per mask.
    oversample_ratio: ``>= 1``.
    importance_sample_ratio: in ``[0, 1]``.

  Returns:
    ``[N, num_points, 2]`` points (x, y) in ``[0, 1]``.
  """
  if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
    raise ValueError(f"need oversample_ratio >= 1 and importance_sample_ratio in [0, 1], got "
                     f"{oversample_ratio} and {importance_sample_ratio}.")
  logits = lax.stop_gradient(as_float(logits))
  if logits.ndim != 3:
    raise ValueError(f"`logits` must be [N, H, W] mask logits, got {logits.shape}.")
  n = logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  draw, fill = jax.random.split(key)
  coords = jax.random.uniform(draw, (n, num_sampled, 2), logits.dtype)
  uncertainty = -jnp.abs(point_sample(logits[..., None], coords)[..., 0])
  _, index = lax.top_k(uncertainty, num_uncertain)
  chosen = jnp.take_along_axis(coords, index[..., None], axis=1)
  extra = jax.random.uniform(fill, (n, num_points - num_uncertain, 2), logits.dtype)
  return jnp.concatenate([chosen, extra], axis=1)


def _mask_costs(point_logits: Array, point_labels: Array) -> tuple[Array, Array]:
  """Mean BCE and dice costs ``[B, Q, M]`` of logits ``[B, P, Q]`` against labels ``[B, P, M]``."""
  hi = lax.Precision.HIGHEST
  pos, neg = jax.nn.softplus(-point_logits), jax.nn.softplus(point_logits)
  bce = (jnp.einsum("bpq,bpm->bqm", pos, point_labels, precision=hi)
         + jnp.einsum("bpq,bpm->bqm", neg, 1 - point_labels, precision=hi))
  probs = jax.nn.sigmoid(point_logits)
  inter = jnp.einsum("bpq,bpm->bqm", probs, point_labels, precision=hi)
  total = jnp.sum(probs, 1)[:, :, None] + jnp.sum(point_labels, 1)[:, None, :]
  return bce / point_logits.shape[1], 1 - (2 * inter + 1) / (total + 1)


def _matching(cls_logits, mask_logits, gt_masks, gt_labels, gt_mask, coords, weights):
  """Hungarian matching on Mask2Former's cost at the shared points ``coords [B, P, 2]``."""
  cls_logits, mask_logits, gt_masks = (lax.stop_gradient(x)
                                       for x in (cls_logits, mask_logits, gt_masks))
  point_logits = point_sample(jnp.moveaxis(mask_logits, 1, -1), coords)       # [B, P, Q]
  point_labels = point_sample(jnp.moveaxis(gt_masks, 1, -1), coords)          # [B, P, M]
  bce, dice = _mask_costs(point_logits, point_labels)
  probs = jax.nn.softmax(cls_logits, axis=-1)
  labels = jnp.clip(gt_labels, 0, cls_logits.shape[-1] - 1)
  cls = -jnp.take_along_axis(probs, jnp.broadcast_to(labels[:, None, :], bce.shape), axis=-1)
  cost = weights[0] * cls + weights[1] * bce + weights[2] * dice
  return hungarian_matching(cost, valid=gt_mask)


def _check(cls_logits, mask_logits, gt_masks, gt_labels, gt_mask, num_classes):
  b, q = cls_logits.shape[:2]
  if cls_logits.ndim != 3 or cls_logits.shape[-1] != num_classes + 1:
    raise ValueError(f"`cls_logits` must be [B, Q, num_classes + 1] (the last is 'no object'), "
                     f"got {cls_logits.shape} with num_classes={num_classes}.")
  if mask_logits.ndim != 4 or mask_logits.shape[:2] != (b, q):
    raise ValueError(f"`mask_logits` must be [B, Q, H, W] = [{b}, {q}, H, W], got "
                     f"{mask_logits.shape}.")
  if gt_masks.ndim != 4 or gt_masks.shape[0] != b:
    raise ValueError(f"`gt_masks` must be [B, M, H', W'] with B={b}, got {gt_masks.shape}.")
  check_targets_mask(gt_labels, gt_mask, gt_masks.shape[:2])


def mask2former_loss(cls_logits: ArrayLike, mask_logits: ArrayLike, gt_masks: ArrayLike,
                     gt_labels: ArrayLike, gt_mask: ArrayLike, *, key: Array | None = None,
                     num_classes: int, num_points: int = 12544, oversample_ratio: float = 3.0,
                     importance_sample_ratio: float = 0.75, eos_coef: float = 0.1,
                     cls_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                     match_point_coords: ArrayLike | None = None,
                     loss_point_coords: ArrayLike | None = None,
                     axis_name: Any = None) -> dict[str, Array]:
  r"""The set criterion of Mask2Former (its ``SetCriterion`` and ``HungarianMatcher``).
  https://arxiv.org/abs/2112.01527

  Matching: ``num_points`` uniform points per image, shared by its queries
  and targets; the cost of query :math:`q` for target :math:`m` is

  .. math::
     C_{qm} = -\lambda_\mathrm{cls}\, \mathrm{softmax}(x_q)_{y_m}
        + \lambda_\mathrm{mask} \overline{\mathrm{BCE}}(s_q, t_m)
        + \lambda_\mathrm{dice} \Bigl(1 - \frac{2 \sum s_q t_m + 1}{\sum s_q + \sum t_m + 1}\Bigr)

  over the sampled logits :math:`s_q` (sigmoid inside the dice) and target
  values :math:`t_m` (the weights are the loss weights, as Mask2Former's
  config). Losses, with :math:`N = \max(\mathrm{pmean}(\#\text{real masks}), 1)`:
  ``cls_loss`` the cross entropy of all queries against their matched label
  or "no object" (class weight ``eos_coef``, a weighted mean); ``mask_loss``
  and ``dice_loss`` the mean BCE and the dice loss of each matched mask on
  its own ``num_points`` importance-sampled points
  (:func:`uncertain_point_coords`), summed over real masks and divided by
  :math:`N`. ``loss = cls_weight * cls + mask_weight * mask + dice_weight * dice``.

  Keyword correspondence with Mask2Former's config: ``num_points``
  (``TRAIN_NUM_POINTS``), ``oversample_ratio``, ``importance_sample_ratio``,
  ``eos_coef`` (``NO_OBJECT_WEIGHT``), ``cls_weight`` / ``mask_weight`` /
  ``dice_weight`` (``CLASS_WEIGHT``, ``MASK_WEIGHT``, ``DICE_WEIGHT``).

  Args:
    cls_logits: ``[B, Q, num_classes + 1]``, the last "no object".
    mask_logits: ``[B, Q, H, W]``.
    gt_masks: ``[B, M, H', W']`` binary (or soft) masks, any resolution; padded rows may
      hold anything finite.
    gt_labels: ``[B, M]`` integer labels.
    gt_mask: ``[B, M]`` bool, the real targets; ``M <= Q``.
    key: PRNG key for the points (needed unless both point sets are given). Under
      ``shard_map``, fold in the device index so that devices draw different points.
    num_classes, num_points, oversample_ratio, importance_sample_ratio, eos_coef,
      cls_weight, mask_weight, dice_weight: as above.
    match_point_coords: ``[B, P, 2]`` matching points (replace the key's draws).
    loss_point_coords: ``[B, M, P, 2]`` loss points of the mask matched to each target.
    axis_name: mapped axis over which the normalisers are averaged.

  Returns:
    ``{"loss", "cls_loss", "mask_loss", "dice_loss", "num_masks"}``.
  """
  cls_logits, mask_logits, gt_masks = (as_float(x) for x in (cls_logits, mask_logits, gt_masks))
  gt_labels, gt_mask = canonical_labels(gt_labels, "gt_labels"), jnp.asarray(gt_mask)
  _check(cls_logits, mask_logits, gt_masks, gt_labels, gt_mask, num_classes)
  if key is None and (match_point_coords is None or loss_point_coords is None):
    raise ValueError("mask2former_loss needs `key` (a PRNG key) to draw its points, unless "
                     "both `match_point_coords` and `loss_point_coords` are given.")
  b, m = gt_mask.shape
  # without a key both point sets are given, and these keys draw nothing
  match_key, loss_key = jax.random.split(jax.random.key(0) if key is None else key)
  gt_masks = fill_masked(gt_masks, gt_mask)
  if match_point_coords is None:
    match_point_coords = jax.random.uniform(match_key, (b, num_points, 2), mask_logits.dtype)
  weights = (cls_weight, mask_weight, dice_weight)
  matching = _matching(cls_logits, mask_logits, gt_masks, gt_labels, gt_mask,
                       as_float(match_point_coords), weights)
  num_masks = num_targets(gt_mask, axis_name)
  classes = matched_classes(matching, gt_labels, num_classes)
  class_weight = jnp.ones(num_classes + 1).at[-1].set(eos_coef)
  cls = cross_entropy(cls_logits, classes, class_weight=class_weight, axis_name=axis_name)
  matched = jnp.take_along_axis(mask_logits, matching.query_index[:, :, None, None], axis=1)
  flat = lambda x: x.reshape((b * m,) + x.shape[2:])
  if loss_point_coords is None:
    coords = uncertain_point_coords(
        loss_key, flat(matched), num_points=num_points, oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio)
  else:
    coords = flat(as_float(loss_point_coords))
  coords = lax.stop_gradient(coords)
  logits = point_sample(flat(matched)[..., None], coords)[..., 0]      # [BM, P]
  labels = point_sample(flat(gt_masks)[..., None], coords)[..., 0]
  real = flat(gt_mask)
  bce = jnp.mean(binary_cross_entropy(logits, labels, reduction="none"), axis=-1)
  probs = jax.nn.sigmoid(logits)
  inter, total = jnp.sum(probs * labels, -1), jnp.sum(probs, -1) + jnp.sum(labels, -1)
  dice = 1 - (2 * inter + 1) / (total + 1)
  mask_loss = jnp.sum(jnp.where(real, bce, 0)) / num_masks
  dice_loss = jnp.sum(jnp.where(real, dice, 0)) / num_masks
  loss = cls_weight * cls + mask_weight * mask_loss + dice_weight * dice_loss
  return {"loss": loss, "cls_loss": cls, "mask_loss": mask_loss, "dice_loss": dice_loss,
          "num_masks": num_masks}
