r"""Adaptive training sample selection inside ``jit`` (mmdetection ``ATSSAssigner``).

ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020,
https://arxiv.org/abs/1912.02424), for every ground-truth box :math:`m`:

1. on every pyramid level, the ``topk`` anchors whose centres are nearest to
   the box centre (Euclidean) are candidates :math:`\mathcal C_m`;
2. the threshold is :math:`t_m = \mu_m + \sigma_m`, the mean and the unbiased
   standard deviation of the candidates' IoUs with the box;
3. a candidate with IoU :math:`\ge t_m` whose centre lies inside the box,
   :math:`\min(l, t, r, b) > 0.01`, is a positive of :math:`m`;
4. an anchor positive for several boxes takes the one of highest IoU (equal
   IoUs: the lowest slot). Every other anchor is background.

Among anchors at the same distance from a box centre, top-k keeps the lowest
indices (``jax.lax.top_k``; torch's order among equal values is unspecified,
so mmdetection can differ there when a tie straddles the k-th place).

Ground truth is padded to ``[B, M]`` with a boolean ``gt_mask``; padded
boxes (any coordinates, even NaN) never change an output, and the number of
real boxes never retraces. Memory: IoUs and centre distances ``[B, M, A]``
float32 and the positive pairs ``[B, M, A]`` bool.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import pairwise_box_iou
from jaxloss.detection.assigners.max_iou import (
    check_anchors,
    check_ground_truth,
    gather_targets,
)

# mmdetection's margin of "centre inside the box" (fixed there too)
_INSIDE_MARGIN = 0.01


class ATSSAssignment(NamedTuple):
  """Targets of :func:`atss_assign`.

  Attributes:
    labels: ``[B, A]`` int32 class of each anchor's box, ``num_classes`` for background.
    boxes: ``[B, A, 4]`` its box (``xyxy``, float32); zeros for background.
    gt_index: ``[B, A]`` int32 slot of its box in ``gt_boxes``; -1 for background.
    positive: ``[B, A]`` bool.
    ious: ``[B, A]`` float32 IoU of the anchor with its box; 0 for background.
  """
  labels: Array
  boxes: Array
  gt_index: Array
  positive: Array
  ious: Array


def _centres(boxes: Array) -> tuple[Array, Array]:
  return (boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5


def atss_assign(anchors: ArrayLike, num_level_anchors: Sequence[int], gt_boxes: ArrayLike,
                gt_labels: ArrayLike, gt_mask: ArrayLike, *, num_classes: int,
                topk: int = 9) -> ATSSAssignment:
  r"""Assigns anchors to padded ground-truth boxes by ATSS (mmdetection ``ATSSAssigner``).
  https://arxiv.org/abs/1912.02424

  See the module docstring for the rules. Same numbers as mmdetection 3.3
  (``tests/fixtures/mmdet_anchor.npz``).

  Args:
    anchors: ``[A, 4]`` ``xyxy``, levels concatenated (e.g. :func:`jaxloss.anchor_grid`).
    num_level_anchors: number of anchors of each level (static), summing to ``A``.
    gt_boxes: ``[B, M, 4]`` ``xyxy``; padded rows may hold anything.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)``.
    gt_mask: ``[B, M]`` bool, True for real boxes.
    num_classes: number of classes (the background label).
    topk: candidates per level and box (fewer on a level with fewer anchors).

  Returns:
    An :class:`ATSSAssignment`; no gradient flows through it.
  """
  sizes = tuple(int(n) for n in num_level_anchors)
  if sum(sizes) != np.shape(anchors)[0] or min(sizes, default=0) < 1:
    raise ValueError(f"num_level_anchors {sizes} must be positive and sum to the number of "
                     f"anchors, {np.shape(anchors)[0]}.")
  if int(topk) < 1:
    raise ValueError(f"topk must be >= 1, got {topk!r}.")
  return _atss_assign(anchors, gt_boxes, gt_labels, gt_mask, num_level_anchors=sizes,
                      num_classes=int(num_classes), topk=int(topk))


def _candidates(distances: Array, sizes: tuple[int, ...], topk: int) -> Array:
  """``[B, M, K]`` indices of the ``topk`` nearest anchors of every level."""
  bounds = np.cumsum([0, *sizes])
  picks = [jax.lax.top_k(-distances[..., a:b], min(topk, b - a))[1] + a
           for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
  return jnp.concatenate(picks, axis=-1)


def _threshold(cand_ious: Array) -> Array:
  """Mean plus unbiased standard deviation over the last axis (inf for one candidate:
  torch's std of one value is NaN, which no IoU reaches)."""
  count = cand_ious.shape[-1]
  if count < 2:
    return jnp.full(cand_ious.shape[:-1], jnp.inf, cand_ious.dtype)
  mean = jnp.mean(cand_ious, axis=-1)
  var = jnp.sum(jnp.square(cand_ious - mean[..., None]), axis=-1) / (count - 1)
  return mean + jnp.sqrt(var)


def _positive_pairs(anchors: Array, boxes: Array, mask: Array, ious: Array,
                    sizes: tuple[int, ...], topk: int) -> Array:
  """``[B, M, A]`` bool: anchor ``a`` is an ATSS positive of box ``m``."""
  ax, ay = _centres(anchors)
  gx, gy = _centres(boxes)
  distances = jnp.sqrt(jnp.square(ax[None, None] - gx[..., None])
                       + jnp.square(ay[None, None] - gy[..., None]))
  cand = _candidates(distances, sizes, topk)  # [B, M, K]
  cand_ious = jnp.take_along_axis(ious, cand, axis=-1)
  cx, cy = ax[cand], ay[cand]
  x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
  inside = jnp.minimum(jnp.minimum(cx - x1, cy - y1), jnp.minimum(x2 - cx, y2 - cy))
  good = ((cand_ious >= _threshold(cand_ious)[..., None]) & (inside > _INSIDE_MARGIN)
          & mask[..., None])
  scatter = lambda idx, val: jnp.zeros(anchors.shape[0], bool).at[idx].set(val)
  return jax.vmap(jax.vmap(scatter))(cand, good)


@functools.partial(jax.jit, static_argnames=("num_level_anchors", "num_classes", "topk"))
def _atss_assign(anchors, gt_boxes, gt_labels, gt_mask, *, num_level_anchors, num_classes,
                 topk) -> ATSSAssignment:
  anchors = check_anchors(anchors)
  boxes, labels, mask = check_ground_truth(gt_boxes, gt_labels, gt_mask)
  ious = pairwise_box_iou(boxes, anchors[None])  # [B, M, A]
  pairs = _positive_pairs(anchors, boxes, mask, ious, num_level_anchors, topk)
  scores = jnp.where(pairs, ious, -1.0)
  gt_index = jnp.where(jnp.any(pairs, axis=1), jnp.argmax(scores, axis=1), -1)
  gt_index = gt_index.astype(jnp.int32)
  out_labels, out_boxes, positive = gather_targets(gt_index, boxes, labels, num_classes)
  return ATSSAssignment(out_labels, out_boxes, gt_index, positive,
                        jnp.where(positive, jnp.max(scores, axis=1), 0.0))
