r"""FCOS: points, target assignment inside ``jit``, and the FCOS loss.

FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection",
ICCV 2019) predicts, at every feature-map location ("point") of every pyramid
level, class scores, the distances ``(l, t, r, b)`` from the point to the four
sides of its box, and a centerness score. This module follows mmdetection
3.3's ``FCOSHead`` number for number (its "improved" configuration as the
default: center sampling, ``norm_on_bbox``, GIoU), with two differences that
make it a JAX loss:

* ground truth is padded to a static ``[B, M]`` with a boolean ``gt_mask``
  instead of a ragged list, and the assignment of points to boxes is computed
  *inside* the compiled function by masks and a ``min`` over a static
  ``[M, P]`` grid per image, so that images with different numbers of boxes
  never retrace. Padded boxes (``gt_mask=False``) may hold any coordinates,
  even NaN; they never change any output or gradient. A box marked real whose
  label is not a class (outside ``[0, num_classes)``, e.g. ``-1`` or
  ``num_classes``) or whose coordinates or area are not finite floats (NaN,
  inf, or so large that the area overflows float32, ~1.8e19) is treated as
  padding, consistently in every output.
* losses over "the positives" are masked sums, not boolean-indexed subsets.

mmdetection divides by ``avg_factor + finfo(float32).eps``; here by the
normaliser itself (relative differences of 1e-7). Background points get
zero box targets (mmdetection leaves the distances to box 0 there, unused).
The classification term is the sigmoid focal loss of
:func:`jaxloss.sigmoid_focal_loss` (integer labels, summed): one pass over the
logits forward and one per level backward, each level's gradient computed
from its own logits (a ``custom_vjp``), which keeps the step within a few
times a bare ``softplus`` over the logits. With ``box_loss="giou"`` the GIoU
and centerness terms are one ``custom_vjp`` too, with the analytic GIoU
gradient. With ``jaxloss.fused_kernels(False)`` all are plain autodiff (same
numbers; forward mode works there).

Compile time: inside the loss every per-point quantity is one ``[N, ...]``
array of rows ordered level, image, point (``N = B * P``), the heads joined
as contiguous per-level blocks (class logits ``[N, C]``; box and centerness
outputs together, ``[N, 5]``) and the targets assigned in that order, so each
loss term is compiled once, not once per level, and the levels' gradients are
block copies. The loss is traced with ``jnp``'s own small ``jit``s inlined
(:func:`_inlined`). ``jax.jit(jax.value_and_grad(fcos_loss))`` at batch 8,
512x512, 80 classes, ``M = 100`` is about 40 XLA:CPU kernels.

Memory: the assignment compares every point with every padded box. Each
image's boxes are first sorted by area, so the smallest candidate is the
first one, found by one fused ``min`` over a ``[B, M, P]`` grid that XLA
stores as the narrowest unsigned integer holding ``M`` (one byte for
``M < 256``): 4.2 MiB at batch 8, 512x512, ``M = 100``, against 14 MiB for
the class logits alone, so no chunked mode is needed below ``M`` in the
thousands. Costs that grow as ``P x M`` are compute, not storage. The whole
``value_and_grad`` at that size keeps about 16 MiB of temporaries: the joined
class logits (14 MiB) and ``[N]``-sized rows; no other ``[N, C]`` array.

Worked example, a Flax NNX FCOS head's outputs to the loss dict::

  import jax, optax
  from flax import nnx
  import jaxloss

  class Head(nnx.Module):  # shared over pyramid levels, as in FCOS
    def __init__(self, channels, num_classes, rngs):
      self.cls = nnx.Conv(channels, num_classes, (3, 3), rngs=rngs)
      self.box = nnx.Conv(channels, 4, (3, 3), rngs=rngs)
      self.ctr = nnx.Conv(channels, 1, (3, 3), rngs=rngs)

    def __call__(self, feats):  # feats: per level [B, H_l, W_l, channels]
      return ([self.cls(f) for f in feats],
              [jax.nn.relu(self.box(f)) for f in feats],  # ltrb in strides
              [self.ctr(f) for f in feats])

  # 512x512 images, strides 8..128: feature maps 64, 32, 16, 8, 4.
  # gt_boxes [B, M, 4] xyxy pixels, gt_labels [B, M] int, gt_mask [B, M] bool;
  # M is fixed (e.g. 100) and images with fewer boxes are padded (mask False).
  def loss_fn(head, feats, gt_boxes, gt_labels, gt_mask):
    out = jaxloss.fcos_loss(*head(feats), gt_boxes, gt_labels, gt_mask, num_classes=80)
    return out["loss"], out  # {"loss", "cls_loss", "reg_loss", "centerness_loss", "num_pos"}

  @nnx.jit
  def train_step(head, optimizer, feats, gt_boxes, gt_labels, gt_mask):
    (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
        head, feats, gt_boxes, gt_labels, gt_mask)
    optimizer.update(head, grads)
    return out

  head = Head(256, 80, nnx.Rngs(0))
  optimizer = nnx.Optimizer(head, optax.sgd(0.01), wrt=nnx.Param)
  out = train_step(head, optimizer, feats, gt_boxes, gt_labels, gt_mask)

Compiled once: another batch with other numbers of real boxes reuses it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _fused, classification, iou
from jaxloss._reduce import Array, ArrayLike, _sum, as_float, check_range
from jaxloss._src.labels import canonical_labels
from jaxloss._src.shapes import level_hw
from jaxloss.boxes import Planes, rectangle_area

INF = math.inf
DEFAULT_STRIDES = (8, 16, 32, 64, 128)
DEFAULT_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))
BOX_LOSSES = ("giou", "iou")
# mmdetection's GIoULoss / IoULoss eps (floor of the union, and of the IoU before the log)
_BOX_EPS = 1e-6


def fcos_points(feature_shapes: Sequence[Sequence[int]],
                strides: Sequence[float] = DEFAULT_STRIDES) -> list[Array]:
  r"""The points of every pyramid level, as mmdetection's ``MlvlPointGenerator``.

  Point ``(i, j)`` (row, column) of a level of stride :math:`s` is
  :math:`((j + 0.5) s, (i + 0.5) s)` in pixels, ``(x, y)`` order; points of a
  level are row-major, matching ``feature.reshape(B, H * W, C)`` of an NHWC map.

  Args:
    feature_shapes: per level, ``(H, W)`` or the NHWC shape ``(B, H, W, C)``.
    strides: per level, the stride in pixels.

  Returns:
    A list with one float32 ``[H_l * W_l, 2]`` array per level (constants:
    everything is static).
  """
  return [jnp.asarray(p) for p in _points(feature_shapes, strides)]


def _points(feature_shapes: Sequence[Sequence[int]], strides: Sequence[float]) -> list[np.ndarray]:
  """:func:`fcos_points` as NumPy arrays (constants inside ``jit``)."""
  if len(feature_shapes) != len(strides):
    raise ValueError(
        f"got {len(feature_shapes)} feature shapes but {len(strides)} strides; pass "
        "one stride per pyramid level.")
  _check_strides(strides)
  points = []
  for shape, s in zip(feature_shapes, strides, strict=True):
    h, w = level_hw(shape)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
    points.append(np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32))
  return points


def centerness_targets(ltrb: ArrayLike) -> Array:
  r"""FCOS centerness of distances ``(l, t, r, b)`` to the box sides.

  .. math::
     c = \sqrt{\frac{\min(l, r)}{\max(l, r)} \cdot \frac{\min(t, b)}{\max(t, b)}}

  1 at the box centre, 0 on its border. A point not strictly inside its box
  (some distance :math:`\le 0`) gets 0, with zero gradient.

  Args:
    ltrb: ``[..., 4]`` distances.

  Returns:
    ``[...]`` centerness in ``[0, 1]``, at least float32.

  Raises:
    ValueError: the last axis is not 4.
  """
  ltrb = as_float(ltrb)
  if ltrb.ndim == 0 or ltrb.shape[-1] != 4:
    raise ValueError(f"`ltrb` must be [..., 4] distances (l, t, r, b), got shape {ltrb.shape}.")
  return _centerness(*(ltrb[..., k] for k in range(4)))


def _centerness(left: Array, top: Array, right: Array, bottom: Array) -> Array:
  """:func:`centerness_targets` of the four distance planes (elementwise only)."""
  horizontal = (jnp.minimum(left, right), jnp.maximum(left, right))
  vertical = (jnp.minimum(top, bottom), jnp.maximum(top, bottom))
  inside = (horizontal[0] > 0) & (vertical[0] > 0)
  safe = lambda x: jnp.where(inside, x, 1.0)
  ratio = (safe(horizontal[0]) / safe(horizontal[1])) * (safe(vertical[0]) / safe(vertical[1]))
  return jnp.where(inside, jnp.sqrt(ratio), 0.0)


def _check_strides(strides) -> None:
  for s in strides:
    check_range("strides", s, 0.0, low_open=True, hint=" Each level's stride is in pixels.")


def _check_radius(center_sample_radius) -> None:
  check_range("center_sample_radius", center_sample_radius, 0.0,
              hint=" It is the half-side of the centre region, in strides.")


def _check_levels(points, strides, regress_ranges) -> None:
  if isinstance(points, (jax.Array, np.ndarray)):
    raise TypeError(
        "points must be the per-level list returned by fcos_points (one [P_l, 2] array "
        "per level), not one concatenated array: the level decides stride and range.")
  if not len(points) == len(strides) == len(regress_ranges):
    raise ValueError(
        f"got {len(points)} point levels, {len(strides)} strides and "
        f"{len(regress_ranges)} regress ranges; pass one of each per pyramid level.")
  _check_strides(strides)


def _ground_truth(gt_boxes, gt_labels, gt_mask) -> tuple[Array, Array, Array]:
  gt_boxes, gt_labels, gt_mask = (jnp.asarray(gt_boxes), jnp.asarray(gt_labels),
                                  jnp.asarray(gt_mask))
  if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
    raise ValueError(f"gt_boxes must be [B, M, 4] (xyxy pixels), got {gt_boxes.shape}.")
  if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
    raise ValueError(
        f"gt_labels {gt_labels.shape} and gt_mask {gt_mask.shape} must be [B, M] = "
        f"{gt_boxes.shape[:2]}, matching gt_boxes.")
  if gt_mask.dtype != jnp.bool_:
    raise TypeError(f"gt_mask must be boolean (True = real box), got {gt_mask.dtype}.")
  return gt_boxes, canonical_labels(gt_labels, "gt_labels"), gt_mask


def _usable(boxes: Array, labels: Array, mask: Array, num_classes: int) -> tuple[Array, Array]:
  """The mask of the boxes that take part, and their areas (0 for the others).

  A box takes part when it is real (``mask``), its label is a class, and its
  coordinates and area are finite: otherwise it is padding everywhere. Only
  ``where`` touches a padded slot's coordinates, so NaN padding forms no NaN.
  """
  mask = mask & (labels >= 0) & (labels < num_classes)
  boxes = jnp.where(mask[..., None], boxes, 0.0)
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  mask = mask & jnp.isfinite(area) & jnp.all(jnp.isfinite(boxes), axis=-1)
  return mask, jnp.where(mask, area, 0.0)


def _sort_by_area(boxes: Array, labels: Array, mask: Array, area: Array) -> tuple[Array, Array]:
  """Each image's boxes ordered by area (real boxes first, ties by index), as ``[B, M, 5]``
  rows ``(x1, y1, x2, y2, label)``, and the sorted mask.

  After this, "the candidate of smallest area" is "the first candidate". The
  labels travel as float32 (exact below 2^24) so that one sort carries them.
  """
  # real areas are finite: padding gets an infinite key, sorted after them (stable, so
  # ties keep their index), and the sorted mask is "key is finite"
  key = jnp.broadcast_to(jnp.where(mask, area, jnp.inf)[..., None], (*mask.shape, 5))
  rows = jnp.concatenate([jnp.where(mask[..., None], boxes, 0.0),
                          labels.astype(boxes.dtype)[..., None]], -1)
  key, rows = jax.lax.sort((key, rows), dimension=1, is_stable=True, num_keys=1)
  return rows, key[..., 0] < jnp.inf


def _index_dtype(num_boxes: int):
  """Smallest unsigned integer type holding ``0..num_boxes``: the candidate-index
  grid is the one ``[B, M, P]`` array XLA materialises, so its width is the memory."""
  for dtype in (jnp.uint8, jnp.uint16):
    if num_boxes <= jnp.iinfo(dtype).max:
      return dtype
  return jnp.int32


def _first_candidate(points: Array, stride: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     boxes: Array, mask: Array, center_sampling: bool, radius: float) -> Array:
  """``[B, P]``: index of the first candidate box of each point (``M`` if none).

  Works on ``[B, M, P]`` (points on the minor axis, so the reduction over
  boxes vectorises) in one fused loop; ``stride``, ``lo``, ``hi`` are ``[P]``.
  """
  x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
  x, y = points[:, 0], points[:, 1]
  left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y
  if center_sampling:
    # strictly inside the centre region, as mmdet's min(distances) > 0 (x - a > 0 iff x > a)
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, stride * np.float32(radius)
    ok = ((x > jnp.maximum(cx - half, x1)) & (y > jnp.maximum(cy - half, y1))
          & (x < jnp.minimum(cx + half, x2)) & (y < jnp.minimum(cy + half, y2)))
  else:
    ok = (left > 0) & (top > 0) & (right > 0) & (bottom > 0)
  reach = jnp.maximum(jnp.maximum(left, top), jnp.maximum(right, bottom))
  ok = ok & (reach >= lo) & (reach <= hi) & mask[..., None]
  num_boxes = boxes.shape[1]
  dtype = _index_dtype(num_boxes)
  index = jax.lax.broadcasted_iota(dtype, ok.shape, 1)
  return jnp.min(jnp.where(ok, index, num_boxes), axis=1).astype(jnp.int32)


def _per_point(points: Sequence[Array], values: Sequence[float]) -> np.ndarray:
  """A per-level static value repeated over that level's points: float32 ``[P]``."""
  return np.concatenate([np.full(p.shape[0], v, np.float32)
                         for p, v in zip(points, values, strict=True)])


def _rows(x: Array, sizes: Sequence[int]) -> Array:
  """``[B, P, ...]`` (levels concatenated along ``P``) as ``[B * P, ...]`` rows ordered
  level, image, point: the order of :func:`_level_major`."""
  bounds = np.cumsum([0, *sizes])
  return jnp.concatenate([x[:, a:b].reshape(-1, *x.shape[2:])
                          for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def _assign(points: Sequence[Array], gt_boxes: Array, gt_labels: Array, gt_mask: Array, *,
            num_classes: int, strides, regress_ranges, center_sampling: bool,
            center_sample_radius: float, norm_on_bbox: bool,
            level_major: bool) -> tuple[Array, Array, Array, Array]:
  """:func:`fcos_targets` as rows, ``(labels [N], ltrb [N, 4], centerness [N],
  positive [N])``, ``N = B * P``, ordered image, point (``fcos_targets``'s order
  flattened) or, with ``level_major``, level, image, point (the order of
  :func:`_level_major`).

  Only the candidate search runs on the ``[B, M, P]`` grid; its ``[B, P]``
  result is put in row order once, and everything after it is elementwise over
  rows (the assigned box is one gather), so that the loss reorders nothing.
  """
  if gt_boxes.shape[1] == 0:  # no ground-truth slots: one padding slot, never real
    gt_boxes = jnp.zeros((gt_boxes.shape[0], 1, 4), gt_boxes.dtype)
    gt_labels, gt_mask = (jnp.zeros(gt_boxes.shape[:2], x.dtype) for x in (gt_labels, gt_mask))
  batch, num_boxes = gt_boxes.shape[:2]
  # points are usually constants: numpy keeps what is computed from them constant
  xp = jnp if any(isinstance(p, jax.core.Tracer) for p in points) else np
  points = [xp.asarray(p, np.float32) for p in points]
  boxes = jax.lax.stop_gradient(as_float(gt_boxes)).astype(jnp.float32)
  usable, area = _usable(boxes, gt_labels, gt_mask, num_classes)
  rows, mask = _sort_by_area(boxes, gt_labels, usable, area)
  boxes = rows[..., :4]
  stride, lo, hi = (_per_point(points, values) for values in (
      strides, [r[0] for r in regress_ranges], [r[1] for r in regress_ranges]))
  all_points = xp.concatenate(points)
  first = _first_candidate(all_points, stride, lo, hi, boxes, mask, center_sampling,
                           center_sample_radius)
  if level_major:  # rows: per level, its points of every image
    first = _rows(first, [p.shape[0] for p in points])
    blocks = list(zip(points, strides, strict=True))
  else:
    first = first.reshape(-1)
    blocks = [(all_points, stride)]
  positive = first < num_boxes
  image = np.concatenate([np.repeat(np.arange(batch), p.shape[0]) for p, _ in blocks])
  index = image * num_boxes + jnp.minimum(first, num_boxes - 1)
  assigned = jnp.take(rows.reshape(-1, 5), index, axis=0)
  labels = jnp.where(positive, assigned[:, 4].astype(jnp.int32), num_classes)
  assigned = assigned[:, :4]
  xyxy = xp.concatenate([xp.tile(p, (batch, 2)) for p, _ in blocks])
  # (x - x1, y - y1, x2 - x, y2 - y), exactly: negation is exact
  ltrb = (xyxy - assigned) * np.array([1, 1, -1, -1], np.float32)
  if norm_on_bbox:
    ltrb = ltrb / np.concatenate([np.tile(np.broadcast_to(np.float32(s), p.shape[:1]), batch)
                                  for p, s in blocks])[:, None]
  ltrb = jnp.where(positive[:, None], ltrb, 0.0)
  return labels, ltrb, _centerness(*(ltrb[:, k] for k in range(4))), positive


def fcos_targets(points: Sequence[ArrayLike], gt_boxes: ArrayLike, gt_labels: ArrayLike,
                 gt_mask: ArrayLike, *, num_classes: int,
                 strides: Sequence[float] = DEFAULT_STRIDES,
                 regress_ranges: Sequence[tuple[float, float]] = DEFAULT_REGRESS_RANGES,
                 center_sampling: bool = True, center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = True) -> tuple[Array, Array, Array]:
  r"""Assigns every point to a ground-truth box, as mmdetection's ``FCOSHead``.

  Box ``m`` is a candidate for point ``p`` of level ``l`` (stride :math:`s_l`,
  range :math:`[lo_l, hi_l]`) when it is real (``gt_mask``), the point lies
  strictly inside it (with ``center_sampling``: strictly inside the box
  intersected with the square of half-side ``center_sample_radius`` :math:`s_l`
  around the box centre), and :math:`lo_l \le \max(l, t, r, b) \le hi_l`
  (bounds inclusive; full-box distances). The point takes the candidate of
  smallest area (ties: lowest index); without candidates it is background.

  Computed with static shapes only: each image's boxes are sorted by area
  once (``[B, M]``), then one fused ``min`` over the ``[B, M, P]`` candidate
  grid finds each point's first candidate. No host round trip, no retrace
  when the number of real boxes changes. Memory: XLA materialises that grid
  as the smallest unsigned integers holding ``M`` (``B * M * P`` bytes for
  ``M < 256``; 4.2 MiB of temporaries at batch 8, 512x512, ``M = 100``).

  Args:
    points: per-level ``[P_l, 2]`` points from :func:`fcos_points`.
    gt_boxes: ``[B, M, 4]`` boxes, ``xyxy`` pixels, padded to ``M``.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)`` (any integer
      dtype). A real box with another label (``-1``, ``num_classes``) is
      treated as padding.
    gt_mask: ``[B, M]`` boolean, ``True`` for real boxes. Padded entries may
      hold anything (even NaN) and never change the result; so may real boxes
      with non-finite coordinates or area (treated as padding).
    num_classes: number of classes; the background label.
    strides: per level, the stride in pixels.
    regress_ranges: per level, ``(lo, hi)`` of the largest distance.
    center_sampling: restrict positives to the centre region.
    center_sample_radius: its half-side, in strides (>= 0).
    norm_on_bbox: divide box targets by the level's stride.

  Returns:
    ``(labels [B, P] int32, box_targets [B, P, 4] ltrb, centerness [B, P])``
    over all levels concatenated (level-major, then row-major). Background
    points have label ``num_classes``, zero box targets and zero centerness.
    Targets carry no gradient.
  """
  _check_levels(points, strides, regress_ranges)
  _check_radius(center_sample_radius)
  gt_boxes, gt_labels, gt_mask = _ground_truth(gt_boxes, gt_labels, gt_mask)
  labels, ltrb, centerness, _ = _assign(
      points, gt_boxes, gt_labels, gt_mask, num_classes=num_classes, strides=strides,
      regress_ranges=regress_ranges, center_sampling=center_sampling,
      center_sample_radius=center_sample_radius, norm_on_bbox=norm_on_bbox,
      level_major=False)
  batch = gt_boxes.shape[0]
  return (labels.reshape(batch, -1), ltrb.reshape(batch, -1, 4),
          centerness.reshape(batch, -1))


def centerness_loss(logits: ArrayLike, targets: ArrayLike, *, weight=None, where=None,
                    reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""FCOS centerness loss: binary cross entropy of a logit against a soft target.

  .. math::
     \ell(x, c) = -\left[c \log \sigma(x) + (1 - c) \log(1 - \sigma(x))\right]

  (mmdetection's ``CrossEntropyLoss(use_sigmoid=True)`` on the centerness
  branch), via :func:`jaxloss.binary_cross_entropy`.

  Args:
    logits: ``[...]`` centerness logits, or ``[..., 1]`` (a head's one-channel
      output; the channel is dropped).
    targets: ``[...]`` centerness targets in ``[0, 1]``
      (:func:`centerness_targets`).
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  logits, targets = jnp.asarray(logits), jnp.asarray(targets)
  if logits.ndim == targets.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  if logits.shape != targets.shape:
    raise ValueError(
        f"centerness logits {logits.shape} and targets {targets.shape} must have one "
        "shape (a trailing channel of 1 on the logits is allowed).")
  return classification.binary_cross_entropy(
      logits, as_float(targets), weight=weight, where=where, reduction=reduction,
      avg_factor=avg_factor, axis_name=axis_name)


def _inlined(fn):
  """``fn`` traced with ``jax.disable_jit()``: the ``jnp`` functions it calls, each a
  small ``jit`` of its own, are traced inline instead.

  Compile time: each of those ``jit``s is traced (and cached) once per new
  shape, becomes a call that lowering emits and XLA inlines again, and is
  differentiated as a call. Inline, tracing and lowering :func:`fcos_loss`'s
  ``value_and_grad`` cold take 0.25 s less. Only for functions that always
  run under a trace (a ``jit``'s body, ``custom_vjp`` rules) and have no
  ``lax`` loops, which ``disable_jit`` would unroll.
  """
  @functools.wraps(fn)
  def inlined(*args, **kwargs):
    with jax.disable_jit():
      return fn(*args, **kwargs)
  return inlined


def _nhwc(x: ArrayLike, channels: int, what: str) -> Array:
  """One level's ``[B, H, W, K]`` map (for ``K = 1`` the channel axis may be missing)."""
  x = jnp.asarray(x)
  if channels == 1 and x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(
        f"{what} must be per-level NHWC maps [B, H, W, {channels}], got {x.shape}.")
  return x


def _level_major(levels: Sequence[Array]) -> Array:
  """Per-level ``[B, H_l, W_l, K]`` maps as one ``[N, K]``, ``N = B * P`` rows ordered
  level, image, point.

  Each level is one contiguous block, so joining the levels and splitting their
  gradients back are block copies; joining along the points axis of
  ``[B, P_l, K]`` instead interleaves the images, which XLA:CPU compiles to
  loops several times as long.
  """
  return jnp.concatenate([x.reshape(-1, x.shape[-1]) for x in levels])


@_inlined
def _focal_sum_value(levels: tuple[Array, ...], labels: Array, alpha, gamma) -> Array:
  """Sum of the sigmoid focal loss of the levels' rows (:func:`_level_major`) against
  integer ``labels [N]`` (:func:`jaxloss._fused.sigmoid_focal_sum` of the joined logits).

  The gradient is computed level by level from the levels themselves, straight
  into each level's gradient, so neither pass keeps anything of the other:
  the forward pass is one loop over the joined logits, the backward one loop
  per level (XLA:CPU otherwise materialises ``exp``, ``1 / (1 + exp)`` and
  ``log1p`` of the joined logits for the backward pass and recomputes the
  gradient inside each level's copy: four passes and five kernels more).
  """
  return _sum(_fused._focal_label_terms(_level_major(levels), labels, alpha, gamma)[0])


_focal_sum = functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))(_focal_sum_value)


def _focal_sum_fwd(levels, labels, alpha, gamma):
  return _focal_sum_value(levels, labels, alpha, gamma), (levels, labels)


@_inlined
def _focal_sum_bwd(alpha, gamma, residuals, g):
  levels, labels = residuals
  bounds = np.cumsum([0] + [math.prod(x.shape[:-1]) for x in levels])
  grads = []
  for x, a, b in zip(levels, bounds[:-1], bounds[1:], strict=True):
    _, slope = _fused._focal_label_terms(x, labels[a:b].reshape(x.shape[:-1]), alpha, gamma)
    grads.append(g * slope)
  return tuple(grads), None


_focal_sum.defvjp(_focal_sum_fwd, _focal_sum_bwd)


def _min_slope(a: Array, b: Array) -> Array:
  """``d min(a, b) / da`` as autodiff has it: 1 where ``a < b``, 1/2 where equal, else 0."""
  return 0.5 + 0.5 * jnp.sign(b - a)


def _rectangle(sides: Planes) -> tuple[Array, Array, Array, Array]:
  """Width, height, area (:func:`jaxloss.boxes.rectangle_area`) and whether both
  sides are positive (where the area has a gradient), of ``ltrb`` sides."""
  w, h = sides[0] + sides[2], sides[1] + sides[3]
  return w, h, rectangle_area(w, h), (w > 0) & (h > 0)


def _giou_ltrb(pred: Planes, target: Planes):
  """``(1 - GIoU, parts)`` of ``ltrb`` boxes, as :func:`jaxloss.giou_loss` with
  ``box_format="ltrb"`` and ``eps=_BOX_EPS``; ``parts`` for :func:`_giou_ltrb_grad`."""
  inner = _rectangle([jnp.minimum(a, b) for a, b in zip(pred, target, strict=True)])
  outer = _rectangle([jnp.maximum(a, b) for a, b in zip(pred, target, strict=True)])
  own = _rectangle(pred)
  union = own[2] + _rectangle(target)[2] - inner[2]
  iou_ = inner[2] / (union + _BOX_EPS)
  pen = (outer[2] - union) / (outer[2] + _BOX_EPS)
  return 1 - iou_ + pen, (inner, own, outer, union, iou_, pen)


def _giou_ltrb_grad(pred: Array, target: Array) -> Array:
  r"""Derivative of :func:`_giou_ltrb` by ``pred``, for ``ltrb`` boxes ``[N, 4]``.

  With intersection :math:`I`, union :math:`U = A_p + A_t - I`, enclosing area
  :math:`C`, :math:`\mathrm{IoU} = I / (U + \epsilon)` and
  :math:`\mathrm{pen} = (C - U) / (C + \epsilon)`:
  :math:`\partial\ell = (\partial C\,(1 - \mathrm{pen}) - \partial U) / (C + \epsilon)
  - (\partial I - \mathrm{IoU}\,\partial U) / (U + \epsilon)`, where a side moves
  an area by the rectangle's other extent (zero for a zero-area rectangle) and
  the ``min``/``max`` of two sides splits ties in half, as autodiff does.
  Every per-box quantity is computed at the ``[N, 4]`` shape (each box's four
  times), so that XLA fuses the whole gradient into one loop.
  """
  planes = lambda x: tuple(jnp.broadcast_to(x[:, k, None], x.shape) for k in range(4))
  _, (inner, own, outer, union, iou_, pen) = _giou_ltrb(planes(pred), planes(target))
  horizontal = jax.lax.broadcasted_iota(jnp.int32, pred.shape, 1) % 2 == 0  # l and r

  def extent(rect):  # d area / d side: the other extent
    w, h, _, ok = rect
    return jnp.where(ok, jnp.where(horizontal, h, w), 0.0)

  d_inter = extent(inner) * _min_slope(pred, target)
  d_union = extent(own) - d_inter
  d_area_c = extent(outer) * _min_slope(target, pred)
  return ((d_area_c * (1 - pen) - d_union) / (outer[2] + _BOX_EPS)
          - (d_inter - iou_ * d_union) / (union + _BOX_EPS))


def _box_ctr_inputs(rows: Array, box_targets: Array, positive: Array):
  """The box/centerness rows ``[N, 5]`` and box targets, other rows made harmless."""
  unit = jnp.array([0.0, 0.0, 1.0, 1.0], rows.dtype)
  return (jnp.where(positive[:, None], rows[:, :4], unit),
          jnp.where(positive[:, None], box_targets, unit), jnp.where(positive, rows[:, 4], 0.0))


@_inlined
def _box_ctr_value(box_levels, ctr_levels, box_targets, ctr_targets, positive):
  """``(sum of c (1 - GIoU), sum of BCE(z, c))`` over the positive rows of the levels'
  box outputs and centerness logits (``[B, H_l, W_l, 4]`` and ``[..., 1]``), ``c`` the
  centerness target.

  A ``custom_vjp`` (:data:`_box_ctr_sums`): the forward pass reads the joined
  ``[N, 5]`` rows once per sum; the backward pass computes the analytic gradient
  (:func:`_giou_ltrb_grad`) in one pass and splits it into the levels. Equal
  to autodiff of :func:`jaxloss.giou_loss` and :func:`centerness_loss`
  (``jaxloss.fused_kernels(False)``), in fewer kernels.
  """
  pred, target, z = _box_ctr_inputs(_box_and_centerness_rows(box_levels, ctr_levels), box_targets,
                                    positive)
  giou, _ = _giou_ltrb([pred[:, k] for k in range(4)], [target[:, k] for k in range(4)])
  bce = _fused._bce_parts(z, ctr_targets)[0]
  return (_sum(jnp.where(positive, ctr_targets * giou, 0.0)),
          _sum(jnp.where(positive, bce, 0.0)))


_box_ctr_sums = jax.custom_vjp(_box_ctr_value)


def _box_ctr_sums_fwd(*args):
  return _box_ctr_value(*args), args


@_inlined
def _box_ctr_sums_bwd(residuals, g):
  box_levels, ctr_levels, box_targets, ctr_targets, positive = _fused._recompute(residuals)
  pred, target, z = _box_ctr_inputs(_box_and_centerness_rows(box_levels, ctr_levels), box_targets,
                                    positive)
  scale = jnp.where(positive, ctr_targets, 0.0)
  d_box = _giou_ltrb_grad(pred, target) * (g[0] * scale)[:, None]
  d_ctr = jnp.where(positive, _fused._sigmoid_parts(z)[0] - ctr_targets, 0.0) * g[1]
  # one [N, 5] buffer that the levels copy from: the concatenation is the last op, or
  # XLA:CPU fuses the gradient into each level's copy
  grad = jnp.concatenate([d_box, d_ctr[:, None]], 1)
  bounds = np.cumsum([0] + [math.prod(x.shape[:-1]) for x in box_levels])
  blocks = [grad[a:b].reshape(*box.shape[:-1], 5)
            for a, b, box in zip(bounds[:-1], bounds[1:], box_levels, strict=True)]
  return tuple(x[..., :4] for x in blocks), tuple(x[..., 4:] for x in blocks), None, None, None


_box_ctr_sums.defvjp(_box_ctr_sums_fwd, _box_ctr_sums_bwd)


def _box_and_centerness_rows(box_levels, ctr_levels) -> Array:
  """The levels' box outputs and centerness logits joined as one ``[N, 5]``.

  One join, so that their gradients are written once, into one ``[N, 5]``
  buffer that the levels copy from; joined separately, XLA:CPU recomputes the
  centerness gradient inside each level's copy and compiles 15-20% more code.
  """
  return _level_major([jnp.concatenate([box, ctr], -1)
                       for box, ctr in zip(box_levels, ctr_levels, strict=True)])


def _check_heads(cls_logits, box_preds, centerness_logits, strides, regress_ranges, num_classes,
                 box_loss, focal_gamma) -> None:
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}.")
  if not focal_gamma >= 0:
    raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma!r}.")
  for name, levels in (("cls_logits", cls_logits), ("box_preds", box_preds),
                       ("centerness_logits", centerness_logits)):
    if isinstance(levels, (jax.Array, np.ndarray)) or len(levels) != len(strides):
      raise ValueError(
          f"{name} must be a list of per-level maps, one per stride ({len(strides)} "
          "levels); pass the head's outputs level by level.")
  if len(regress_ranges) != len(strides):
    raise ValueError(f"got {len(regress_ranges)} regress ranges for {len(strides)} strides.")
  _check_strides(strides)
  shapes = [tuple(jnp.shape(x)[:3]) for x in cls_logits]
  for name, levels in (("box_preds", box_preds), ("centerness_logits", centerness_logits)):
    if [tuple(jnp.shape(x)[:3]) for x in levels] != shapes:
      raise ValueError(f"{name} levels must have the [B, H, W] of cls_logits {shapes}.")
  if jnp.shape(cls_logits[0])[-1] != num_classes:
    raise ValueError(
        f"cls_logits have {jnp.shape(cls_logits[0])[-1]} channels but num_classes="
        f"{num_classes}; FCOS uses one sigmoid channel per class (no background channel).")


def _device_mean(x: Array, axis_name: Any) -> Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def fcos_loss(cls_logits: Sequence[ArrayLike], box_preds: Sequence[ArrayLike],
              centerness_logits: Sequence[ArrayLike], gt_boxes: ArrayLike,
              gt_labels: ArrayLike, gt_mask: ArrayLike, *, num_classes: int,
              strides: Sequence[float] = DEFAULT_STRIDES,
              regress_ranges: Sequence[tuple[float, float]] = DEFAULT_REGRESS_RANGES,
              center_sampling: bool = True, center_sample_radius: float = 1.5,
              norm_on_bbox: bool = True, box_loss: str = "giou", focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, cls_weight: float = 1.0, reg_weight: float = 1.0,
              centerness_weight: float = 1.0, axis_name: Any = None) -> dict[str, Array]:
  r"""The FCOS loss, targets assigned inside the function (mmdetection's ``FCOSHead``).

  Points are assigned by :func:`fcos_targets`. With :math:`N` = max(mean over
  devices of the number of positives, 1) and :math:`S` = max(mean over
  devices of the summed centerness targets :math:`c_p` of the positives,
  1e-6):

  .. math::
     L_{cls} = \frac{1}{N}\sum_{p, k} \mathrm{FL}(x_{pk}, [y_p = k]), \quad
     L_{reg} = \frac{1}{S}\sum_{p \in pos} c_p \, \ell_{box}(\hat d_p, d_p), \quad
     L_{ctr} = \frac{1}{N}\sum_{p \in pos} \mathrm{BCE}(z_p, c_p)

  with FL the sigmoid focal loss (``focal_alpha``, ``focal_gamma``) over all
  points and classes, :math:`\ell_{box}` ``1 - GIoU`` (``"giou"``) or
  ``-log(max(IoU, 1e-6))`` (``"iou"``) of the boxes decoded around the point
  from the predicted and target ``ltrb``. Without positives the regression and
  centerness losses are exactly 0 with zero gradients. Each term is multiplied
  by its ``*_weight`` (mmdetection's ``loss_weight``); ``loss`` is their sum.

  With ``axis_name`` (inside ``shard_map``/``pmap`` over the batch) the two
  normalisers are ``pmean``'d, as mmdetection's ``reduce_mean``: the ``pmean``
  of the per-device losses and gradients equals the whole-batch loss on one
  device.

  Args:
    cls_logits: per level ``[B, H_l, W_l, num_classes]``.
    box_preds: per level ``[B, H_l, W_l, 4]`` distances ``(l, t, r, b)``, in
      strides if ``norm_on_bbox`` else pixels (as the targets).
    centerness_logits: per level ``[B, H_l, W_l, 1]`` (or ``[B, H_l, W_l]``).
    gt_boxes, gt_labels, gt_mask: padded ground truth, see :func:`fcos_targets`.
    num_classes, strides, regress_ranges, center_sampling,
      center_sample_radius, norm_on_bbox: see :func:`fcos_targets`.
    box_loss: ``"giou"`` or ``"iou"``.
    focal_alpha, focal_gamma: of the classification focal loss.
    cls_weight, reg_weight, centerness_weight: multipliers of the three terms.
    axis_name: mapped batch axis over which the normalisers are averaged.

  Returns:
    ``{"loss", "cls_loss", "reg_loss", "centerness_loss", "num_pos"}``, scalars in
    the logits' precision (float32, or float64 for float64 logits); ``num_pos`` is
    :math:`N`.
  """
  _check_heads(cls_logits, box_preds, centerness_logits, strides, regress_ranges, num_classes,
               box_loss, focal_gamma)
  _check_radius(center_sample_radius)
  return _fcos_loss(
      tuple(cls_logits), tuple(box_preds), tuple(centerness_logits), gt_boxes, gt_labels,
      gt_mask, cls_weight, reg_weight, centerness_weight, num_classes=int(num_classes),
      strides=tuple(strides), regress_ranges=tuple(tuple(r) for r in regress_ranges),
      center_sampling=bool(center_sampling), center_sample_radius=float(center_sample_radius),
      norm_on_bbox=bool(norm_on_bbox), box_loss=box_loss, focal_alpha=focal_alpha,
      focal_gamma=float(focal_gamma), axis_name=axis_name, fused=_fused.fused_enabled())


# Jitted so that an eager call compiles once instead of dispatching every op; inside
# an outer jit/shard_map it is inlined. The term weights stay traced (schedulable);
# `fused` (jaxloss.fused_kernels) is static, so that switching it retraces.
@functools.partial(jax.jit, static_argnames=(
    "num_classes", "strides", "regress_ranges", "center_sampling", "center_sample_radius",
    "norm_on_bbox", "box_loss", "focal_alpha", "focal_gamma", "axis_name", "fused"))
@_inlined
def _fcos_loss(cls_logits, box_preds, centerness_logits, gt_boxes, gt_labels, gt_mask,
               cls_weight, reg_weight, centerness_weight, *, num_classes, strides,
               regress_ranges, center_sampling, center_sample_radius, norm_on_bbox, box_loss,
               focal_alpha, focal_gamma, axis_name, fused) -> dict[str, Array]:
  points = _points([jnp.shape(x) for x in cls_logits], strides)
  labels, box_targets, ctr_targets, positive = _assign(
      points, *_ground_truth(gt_boxes, gt_labels, gt_mask), num_classes=num_classes,
      strides=strides, regress_ranges=regress_ranges, center_sampling=center_sampling,
      center_sample_radius=center_sample_radius, norm_on_bbox=norm_on_bbox, level_major=True)
  box_levels = tuple(as_float(_nhwc(x, 4, "box_preds")) for x in box_preds)
  ctr_levels = tuple(as_float(_nhwc(x, 1, "centerness_logits")) for x in centerness_logits)
  logits = tuple(as_float(_nhwc(x, num_classes, "cls_logits")) for x in cls_logits)
  # counted in the logits' precision: float64 inputs keep a float64 num_pos
  num_pos = jnp.maximum(_device_mean(jnp.sum(positive, dtype=logits[0].dtype), axis_name), 1.0)
  ctr_sum = jnp.maximum(_device_mean(jnp.sum(ctr_targets), axis_name), 1e-6)
  alpha = None if focal_alpha is None or focal_alpha < 0 else float(focal_alpha)
  if fused:
    cls = _focal_sum(logits, labels, alpha, focal_gamma)
  else:
    cls = classification.sigmoid_focal_loss(_level_major(logits), labels, alpha=alpha,
                                            gamma=focal_gamma, reduction="sum")
  cls = cls / num_pos
  box_fn = iou.giou_loss if box_loss == "giou" else iou.iou_loss
  # the normalisers are positive: plain divisions (reduce_loss's avg_factor would guard 0 / 0)
  if fused and box_loss == "giou":
    reg, ctr = _box_ctr_sums(box_levels, ctr_levels, box_targets, ctr_targets, positive)
    reg, ctr = reg / ctr_sum, ctr / num_pos
  else:
    rows = _box_and_centerness_rows(box_levels, ctr_levels)
    boxes, ctr_logits = rows[:, :4], rows[:, 4]
    reg = box_fn(boxes, box_targets, box_format="ltrb", eps=_BOX_EPS, weight=ctr_targets,
                 where=positive, reduction="sum") / ctr_sum
    ctr = centerness_loss(ctr_logits, ctr_targets, where=positive, reduction="sum") / num_pos
  out = {"cls_loss": cls_weight * cls, "reg_loss": reg_weight * reg,
         "centerness_loss": centerness_weight * ctr}
  return {"loss": out["cls_loss"] + out["reg_loss"] + out["centerness_loss"], **out,
          "num_pos": num_pos}
