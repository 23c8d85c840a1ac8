r"""YOLOv8's and YOLOX's detection losses inside ``jit``.

Ultralytics YOLOv8 (Jocher et al., 2023, https://github.com/ultralytics/ultralytics)
predicts, at every cell of every pyramid level, class logits and for each side of its
box a distribution over ``reg_max`` bins (Li et al., "Generalized Focal Loss",
https://arxiv.org/abs/2006.04388), and is trained with targets of the task-aligned
assigner (:func:`jaxloss.task_aligned_assign`, TOOD, https://arxiv.org/abs/2108.07755).
This module is ultralytics 8.3's ``v8DetectionLoss`` number for number, with ground
truth padded to a static ``[B, M]`` and assigned inside the compiled function.

Memory: the assignment holds a few ``[B, M, A]`` arrays (see
:mod:`jaxloss.detection.assigners.task_aligned`). In ``yolov8_loss`` the box and DFL
terms run over at most ``M * topk`` rows per image, which hold every positive (the
task-aligned assigner makes at most ``topk`` per box), not over all ``A`` priors: at
``B = 16``, 640x640, ``M = 100`` that is 22% less CPU time per step. The compiled
``value_and_grad`` there keeps about 350 MiB of temporaries
(``benchmarks/yolo_benchmark.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import classification, regression
from jaxloss._src.numerics import as_float
from jaxloss._src.shapes import level_hw
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import box_to_distance, distance_to_box, iou
from jaxloss.detection.assigners.fcos import padded_ground_truth
from jaxloss.detection.assigners.simota import simota_assign
from jaxloss.detection.assigners.task_aligned import task_aligned_assign
from jaxloss.detection.points import grid_points

YOLOV8_STRIDES = (8, 16, 32)


def yolov8_points(feature_shapes: Sequence[Sequence[int]],
                  strides: Sequence[float] = YOLOV8_STRIDES) -> tuple[np.ndarray, np.ndarray]:
  """Prior centres in pixels ``[A, 2]`` and strides ``[A]``, levels concatenated.

  As ultralytics' ``make_anchors(feats, strides, 0.5) * stride``: cell ``(i, j)`` of a
  level of stride ``s`` is ``((j + 0.5) s, (i + 0.5) s)``, cells row-major.
  """
  points = grid_points(feature_shapes, strides)
  stride = np.concatenate([np.full(p.shape[0], s, np.float32)
                           for p, s in zip(points, strides, strict=True)])
  return np.concatenate(points), stride


def _check_heads(cls_logits, box_logits, strides, num_classes, reg_max) -> None:
  for name, levels in (("cls_logits", cls_logits), ("box_logits", box_logits)):
    if isinstance(levels, (jax.Array, np.ndarray)) or len(levels) != len(strides):
      raise ValueError(f"{name} must be a list of per-level maps [B, H, W, ...], one per stride "
                       f"({len(strides)} levels).")
  shapes = [tuple(jnp.shape(x)[:3]) for x in cls_logits]
  if [tuple(jnp.shape(x)[:3]) for x in box_logits] != shapes:
    raise ValueError(f"box_logits levels must have the [B, H, W] of cls_logits {shapes}.")
  if any(jnp.shape(x)[-1] != num_classes for x in cls_logits):
    raise ValueError(f"cls_logits must have num_classes={num_classes} channels, got "
                     f"{[jnp.shape(x)[-1] for x in cls_logits]}.")
  if not (isinstance(reg_max, int) and reg_max >= 2):
    raise ValueError(f"reg_max must be an int >= 2 (bins per side), got {reg_max!r}.")
  if any(jnp.shape(x)[-1] != 4 * reg_max for x in box_logits):
    raise ValueError(f"box_logits must have 4 * reg_max = {4 * reg_max} channels (side-major: "
                     "channel = side * reg_max + bin), got "
                     f"{[jnp.shape(x)[-1] for x in box_logits]}.")


def _device_mean(x: Array, axis_name: Any) -> Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def yolov8_loss(cls_logits: Sequence[ArrayLike], box_logits: Sequence[ArrayLike],
                gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_mask: ArrayLike, *,
                num_classes: int, strides: Sequence[float] = YOLOV8_STRIDES, reg_max: int = 16,
                topk: int = 10, alpha: float = 0.5, beta: float = 6.0, box_weight: float = 7.5,
                cls_weight: float = 0.5, dfl_weight: float = 1.5,
                axis_name: Any = None) -> dict[str, Array]:
  r"""The YOLOv8 detection loss, targets assigned inside the function (ultralytics'
  ``v8DetectionLoss``).
  https://arxiv.org/abs/2108.07755

  Each side's distance (in strides) is the expectation of the softmax over its
  ``reg_max`` bins; the predicted box is decoded around the cell centre. Priors are
  assigned by :func:`jaxloss.task_aligned_assign` (``topk``, ``alpha``, ``beta``) from
  the sigmoid scores and the decoded boxes in pixels, giving soft scores
  :math:`\hat s` and, per positive prior, the weight :math:`w_a = \sum_c \hat s_{ac}`.
  With :math:`S` = max(mean over devices of :math:`\sum \hat s`, 1):

  .. math::
     L_{cls} = \frac{1}{S}\sum_{a, c} \mathrm{BCE}(x_{ac}, \hat s_{ac}), \quad
     L_{box} = \frac{1}{S}\sum_{a \in pos} w_a (1 - \mathrm{CIoU}_a), \quad
     L_{dfl} = \frac{1}{S}\sum_{a \in pos} \frac{w_a}{4}\sum_{k=1}^4 \mathrm{DFL}(d_{ak})

  with CIoU as :func:`jaxloss.ciou_loss` and DFL as
  :func:`jaxloss.distribution_focal_loss`, its targets (the distances from the cell
  centre to the assigned box's sides, in strides) clipped to ``[0, reg_max - 1.01]``.
  Each term is multiplied by its gain (ultralytics' ``hyp.box``, ``hyp.cls``,
  ``hyp.dfl``) and ``loss`` is their sum: ultralytics' ``loss.detach().sum()``; its
  returned training loss is that times the batch size. Without positives the box and
  DFL losses are exactly 0 with zero gradients. With ``axis_name`` the normaliser
  :math:`S` is ``pmean``'d over devices, so the ``pmean`` of per-device losses equals
  the whole-batch loss (ultralytics normalises per device).

  Args:
    cls_logits: per level ``[B, H_l, W_l, num_classes]`` class logits.
    box_logits: per level ``[B, H_l, W_l, 4 * reg_max]`` bin logits, side-major
      (``l, t, r, b``; channel ``side * reg_max + bin``), as ultralytics' head.
    gt_boxes: ``[B, M, 4]`` ``xyxy`` pixels; gt_labels ``[B, M]`` integer classes;
      gt_mask ``[B, M]`` bool, ``True`` for real boxes. Padding never changes an output.
    num_classes: ``C``.
    strides: per level, in pixels.
    reg_max: bins per side.
    topk, alpha, beta: of the task-aligned assigner (ultralytics: 10, 0.5, 6.0).
    box_weight, cls_weight, dfl_weight: the gains (ultralytics: 7.5, 0.5, 1.5).
    axis_name: mapped batch axis over which the normaliser is averaged.

  Returns:
    ``{"loss", "box_loss", "cls_loss", "dfl_loss", "num_pos", "score_sum"}``, float32
    scalars: ``num_pos`` the mean over devices of the number of positive priors,
    ``score_sum`` the normaliser :math:`S`.
  """
  _check_heads(cls_logits, box_logits, strides, num_classes, reg_max)
  return _yolov8_loss(
      tuple(cls_logits), tuple(box_logits), *padded_ground_truth(gt_boxes, gt_labels, gt_mask),
      box_weight, cls_weight, dfl_weight, num_classes=int(num_classes),
      strides=tuple(float(s) for s in strides), reg_max=reg_max, topk=int(topk),
      alpha=float(alpha), beta=float(beta), axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "strides", "reg_max", "topk", "alpha", "beta", "axis_name"))
def _yolov8_loss(cls_logits, box_logits, gt_boxes, gt_labels, gt_mask, box_weight, cls_weight,
                 dfl_weight, *, num_classes, strides, reg_max, topk, alpha, beta, axis_name):
  shapes = [level_hw(jnp.shape(x)) for x in cls_logits]
  points, stride = yolov8_points(shapes, strides)
  cells = points / stride[:, None]  # cell centres in strides
  batch = jnp.shape(cls_logits[0])[0]
  logits = jnp.concatenate([as_float(x).reshape(batch, -1, num_classes) for x in cls_logits], 1)
  bins = jnp.concatenate([as_float(x).reshape(batch, -1, 4, reg_max) for x in box_logits], 1)
  # a sum, not a matmul: GPUs may run float32 matmuls in TF32 (10-bit mantissa)
  bin_values = lambda b: jnp.arange(reg_max, dtype=b.dtype).reshape((1,) * (b.ndim - 1) + (-1,))
  expectation = lambda b: jnp.sum(jax.nn.softmax(b, axis=-1) * bin_values(b), axis=-1)
  pred = distance_to_box(cells[None], expectation(jax.lax.stop_gradient(bins)))
  assigned = task_aligned_assign(jax.nn.sigmoid(logits), pred * stride[None, :, None], points,
                                 gt_boxes, gt_labels, gt_mask, num_classes=num_classes, topk=topk,
                                 alpha=alpha, beta=beta)
  score_sum = jnp.maximum(_device_mean(jnp.sum(assigned.scores), axis_name), 1.0)
  cls = classification.binary_cross_entropy(logits, assigned.scores, reduction="sum")
  rows = _positive_rows(assigned.positive, min(points.shape[0], max(gt_boxes.shape[1], 1) * topk))
  index = rows.prior
  take = lambda x: jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
  bins = take(bins)
  cells, stride = jnp.asarray(cells)[index], jnp.asarray(stride)[index][..., None]
  pred = distance_to_box(cells, expectation(bins))
  target = take(assigned.boxes) / stride
  weight = jnp.sum(take(assigned.scores), axis=-1)
  box = iou.ciou_loss(pred, target, weight=weight, where=rows.valid, reduction="sum")
  ltrb = jnp.clip(box_to_distance(cells, target), 0.0, reg_max - 1.01)
  dfl = classification.distribution_focal_loss(bins, ltrb, weight=weight / 4, where=rows.valid,
                                               reduction="sum")
  out = {"box_loss": box_weight * box / score_sum, "cls_loss": cls_weight * cls / score_sum,
         "dfl_loss": dfl_weight * dfl / score_sum}
  num_pos = _device_mean(jnp.sum(assigned.positive, dtype=jnp.float32), axis_name)
  return {"loss": out["box_loss"] + out["cls_loss"] + out["dfl_loss"], **out,
          "num_pos": num_pos, "score_sum": score_sum}


class _Rows(NamedTuple):
  prior: Array  # [B, K] prior indices, the positives first
  valid: Array  # [B, K] which of them are positives


def _positive_rows(positive: Array, size: int) -> _Rows:
  """The positive priors of each image as ``size`` static rows.

  The task-aligned assigner makes at most ``topk`` positives per box, so ``M * topk``
  rows hold them all; the box and DFL terms (and the backward pass of the bin softmax)
  then run over those rows instead of all ``A`` priors.
  """
  index = jax.vmap(lambda p: jnp.nonzero(p, size=size, fill_value=0)[0])(positive)
  count = jnp.sum(positive, axis=1, keepdims=True)
  return _Rows(index.astype(jnp.int32), jnp.arange(size)[None] < count)


def yolox_priors(feature_shapes: Sequence[Sequence[int]],
                 strides: Sequence[float] = YOLOV8_STRIDES) -> np.ndarray:
  """``[A, 4]`` priors ``(x, y, stride, stride)`` with ``(x, y)`` the cell's top-left
  corner, levels concatenated, cells row-major: mmdetection's
  ``MlvlPointGenerator(strides, offset=0).grid_priors(..., with_stride=True)``."""
  rows = []
  for shape, s in zip(feature_shapes, strides, strict=True):
    h, w = level_hw(shape)
    ys, xs = np.meshgrid(np.arange(h) * s, np.arange(w) * s, indexing="ij")
    rows.append(np.stack([xs.ravel(), ys.ravel(), np.full(h * w, s), np.full(h * w, s)], -1))
  return np.concatenate(rows).astype(np.float32)


def _check_yolox_heads(cls_logits, box_preds, obj_logits, strides, num_classes) -> None:
  for name, levels in (("cls_logits", cls_logits), ("box_preds", box_preds),
                       ("obj_logits", obj_logits)):
    if isinstance(levels, (jax.Array, np.ndarray)) or len(levels) != len(strides):
      raise ValueError(f"{name} must be a list of per-level maps [B, H, W, ...], one per stride "
                       f"({len(strides)} levels).")
  shapes = [tuple(jnp.shape(x)[:3]) for x in cls_logits]
  for name, levels in (("box_preds", box_preds), ("obj_logits", obj_logits)):
    if [tuple(jnp.shape(x)[:3]) for x in levels] != shapes:
      raise ValueError(f"{name} levels must have the [B, H, W] of cls_logits {shapes}.")
  if any(jnp.shape(x)[-1] != num_classes for x in cls_logits):
    raise ValueError(f"cls_logits must have num_classes={num_classes} channels, got "
                     f"{[jnp.shape(x)[-1] for x in cls_logits]}.")
  if any(jnp.shape(x)[-1] != 4 for x in box_preds):
    raise ValueError("box_preds must have 4 channels (dx, dy, log w, log h in strides).")


def yolox_loss(cls_logits: Sequence[ArrayLike], box_preds: Sequence[ArrayLike],
               obj_logits: Sequence[ArrayLike], gt_boxes: ArrayLike, gt_labels: ArrayLike,
               gt_mask: ArrayLike, *, num_classes: int,
               strides: Sequence[float] = YOLOV8_STRIDES, center_radius: float = 2.5,
               candidate_topk: int = 10, iou_cost_weight: float = 3.0,
               cls_cost_weight: float = 1.0, use_l1: bool = False, cls_weight: float = 1.0,
               box_weight: float = 5.0, obj_weight: float = 1.0, l1_weight: float = 1.0,
               axis_name: Any = None) -> dict[str, Array]:
  r"""The YOLOX loss, targets assigned by SimOTA inside the function (mmdetection's
  ``YOLOXHead.loss_by_feat``).

  Ge et al., "YOLOX: Exceeding YOLO Series in 2021", https://arxiv.org/abs/2107.08430.
  A cell with corner :math:`(x, y)` and stride :math:`s` decodes its prediction
  :math:`(d_x, d_y, d_w, d_h)` to the box of centre :math:`(x + d_x s, y + d_y s)` and
  size :math:`(e^{d_w} s, e^{d_h} s)`. Priors are assigned by
  :func:`jaxloss.simota_assign` (priors at the cell centres; scores
  :math:`\sqrt{\sigma(x_{cls})\,\sigma(x_{obj})}`), giving positives with IoU
  :math:`u_a` to their box. With :math:`N` = max(mean over devices of the number of
  positives, 1):

  .. math::
     L_{obj} = \frac{1}{N}\sum_a \mathrm{BCE}(x^{obj}_a, [a \in pos]), \quad
     L_{cls} = \frac{1}{N}\sum_{a \in pos, c} \mathrm{BCE}(x_{ac}, u_a [c = y_a]), \quad
     L_{box} = \frac{1}{N}\sum_{a \in pos} 1 - \mathrm{IoU}_a^2

  (:func:`jaxloss.iou_loss` ``mode="square"``, ``eps=1e-16``) and, with ``use_l1`` (the
  last epochs of YOLOX training), :math:`L_{l1}` the L1 distance of the raw predictions
  to :math:`((c_x - x) / s, (c_y - y) / s, \log(w / s + 10^{-8}), \log(h / s + 10^{-8}))`
  of the assigned box over positives, divided by :math:`N`. Each term is multiplied by
  its weight (mmdetection's ``loss_weight``: 1, 5, 1, 1); ``loss`` is their sum. Without
  positives the class, box and L1 terms are exactly 0 with zero gradients. With
  ``axis_name`` :math:`N` is ``pmean``'d, as mmdetection's ``reduce_mean``. The size
  channels are exponentiated as in mmdetection, so values above ~88 overflow.

  Args:
    cls_logits: per level ``[B, H_l, W_l, num_classes]``.
    box_preds: per level ``[B, H_l, W_l, 4]`` raw ``(d_x, d_y, d_w, d_h)``.
    obj_logits: per level ``[B, H_l, W_l, 1]``.
    gt_boxes: ``[B, M, 4]`` ``xyxy`` pixels; gt_labels ``[B, M]``; gt_mask ``[B, M]``
      bool. Padding never changes an output.
    num_classes: ``C``.
    strides: per level, in pixels.
    center_radius, candidate_topk, iou_cost_weight, cls_cost_weight: of
      :func:`jaxloss.simota_assign` (its ``iou_weight`` and ``cls_weight``).
    use_l1: add the L1 term.
    cls_weight, box_weight, obj_weight, l1_weight: the terms' weights.
    axis_name: mapped batch axis over which :math:`N` is averaged.

  Returns:
    ``{"loss", "cls_loss", "box_loss", "obj_loss", "l1_loss", "num_pos"}``, float32
    scalars (``l1_loss`` is 0 without ``use_l1``); ``num_pos`` is :math:`N`.
  """
  _check_yolox_heads(cls_logits, box_preds, obj_logits, strides, num_classes)
  return _yolox_loss(
      tuple(cls_logits), tuple(box_preds), tuple(obj_logits),
      *padded_ground_truth(gt_boxes, gt_labels, gt_mask), cls_weight, box_weight, obj_weight,
      l1_weight, num_classes=int(num_classes), strides=tuple(float(s) for s in strides),
      center_radius=float(center_radius), candidate_topk=int(candidate_topk),
      iou_cost_weight=float(iou_cost_weight), cls_cost_weight=float(cls_cost_weight),
      use_l1=bool(use_l1), axis_name=axis_name)


def _yolox_decode(priors: np.ndarray, preds: Array) -> Array:
  """mmdetection's ``YOLOXHead._bbox_decode``: ``[B, A, 4]`` raw predictions to ``xyxy``."""
  priors = priors[None]
  xy = preds[..., :2] * priors[..., 2:] + priors[..., :2]
  wh = jnp.exp(preds[..., 2:]) * priors[..., 2:]
  return jnp.concatenate([xy - wh / 2, xy + wh / 2], -1)


def _yolox_l1_targets(priors: np.ndarray, boxes: Array) -> Array:
  """mmdetection's ``_get_l1_target``: ``xyxy`` boxes as the raw predictions that decode
  to them (a ``1e-8`` inside the log)."""
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  size = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
  priors = priors[None]
  return jnp.concatenate([(centre - priors[..., :2]) / priors[..., 2:],
                          jnp.log(size / priors[..., 2:] + 1e-8)], -1)


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "strides", "center_radius", "candidate_topk", "iou_cost_weight",
    "cls_cost_weight", "use_l1", "axis_name"))
def _yolox_loss(cls_logits, box_preds, obj_logits, gt_boxes, gt_labels, gt_mask, cls_weight,
                box_weight, obj_weight, l1_weight, *, num_classes, strides, center_radius,
                candidate_topk, iou_cost_weight, cls_cost_weight, use_l1, axis_name):
  priors = yolox_priors([level_hw(jnp.shape(x)) for x in cls_logits], strides)
  batch = jnp.shape(cls_logits[0])[0]
  join = lambda levels, k: jnp.concatenate([as_float(x).reshape(batch, -1, k) for x in levels], 1)
  logits, raw, objectness = join(cls_logits, num_classes), join(box_preds, 4), join(obj_logits, 1)
  pred = _yolox_decode(priors, raw)
  scores = jnp.sqrt(jax.nn.sigmoid(logits) * jax.nn.sigmoid(objectness))
  centres = np.concatenate([priors[:, :2] + priors[:, 2:] / 2, priors[:, 2:]], -1)
  assigned = simota_assign(scores, pred, centres, gt_boxes, gt_labels, gt_mask,
                           center_radius=center_radius, candidate_topk=candidate_topk,
                           iou_weight=iou_cost_weight, cls_weight=cls_cost_weight)
  positive = assigned.positive
  num_pos = jnp.maximum(_device_mean(jnp.sum(positive, dtype=jnp.float32), axis_name), 1.0)
  obj = classification.binary_cross_entropy(objectness[..., 0], positive.astype(jnp.float32),
                                            reduction="sum")
  soft = jax.nn.one_hot(assigned.labels, num_classes) * assigned.ious[..., None]
  cls = classification.binary_cross_entropy(logits, soft, where=positive, reduction="sum")
  box = iou.iou_loss(pred, assigned.boxes, mode="square", eps=1e-16, where=positive,
                     reduction="sum")
  out = {"cls_loss": cls_weight * cls / num_pos, "box_loss": box_weight * box / num_pos,
         "obj_loss": obj_weight * obj / num_pos}
  out["l1_loss"] = jnp.zeros((), jnp.float32)
  if use_l1:
    target = _yolox_l1_targets(priors, assigned.boxes)
    l1 = regression.l1_loss(raw, target, where=positive, reduction="sum")
    out["l1_loss"] = l1_weight * l1 / num_pos
  return {"loss": sum(out.values()), **out, "num_pos": num_pos}
