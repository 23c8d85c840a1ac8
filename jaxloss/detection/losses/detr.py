r"""The DETR set criterion: Hungarian matching, then class, L1 and GIoU losses of the matches.

Ground truth is padded to ``[B, M]`` with ``gt_mask``; every query is matched
inside ``jit`` (:func:`jaxloss.hungarian_matching`), so the loss needs no host
round trip, padded targets never change it and one compilation serves any
number of real targets.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_choice, check_targets_mask
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import fill_masked
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import box_iou
from jaxloss.boxes.iou import giou_loss
from jaxloss.classification import binary_cross_entropy, cross_entropy, sigmoid_focal_loss
from jaxloss.detection.matching.costs import CLASS_LOSSES, detr_matching_cost
from jaxloss.detection.matching.hungarian import Matching, hungarian_matching
from jaxloss.regression import l1_loss

# A harmless normalised cxcywh box for padded targets.
_UNIT_BOX = (0.5, 0.5, 1.0, 1.0)


def num_targets(gt_mask: Array, axis_name: Any) -> Array:
  """DETR's normaliser: the real target count, ``pmean``'d over ``axis_name``, at least 1."""
  count = jnp.sum(gt_mask, dtype=jnp.float32)
  if axis_name is not None:
    count = jax.lax.pmean(count, axis_name)
  return jnp.maximum(count, 1.0)


def matched_classes(matching: Matching, gt_labels: Array, num_classes: int) -> Array:
  """``[B, Q]`` class targets: each query's matched label, ``num_classes`` ("no object")
  for unmatched queries."""
  target = matching.target_index
  labels = jnp.take_along_axis(gt_labels, jnp.maximum(target, 0), -1)
  return jnp.where(target >= 0, labels, num_classes)


def _class_loss(cls_logits: Array, box_preds: Array, tgt_boxes: Array, target: Array,
                classes: Array, keep: Array | None, num_boxes: Array, cfg: dict) -> Array:
  """The class loss of queries ``[B, Q]`` whose class targets are ``classes`` (``num_classes``:
  no object); ``keep`` masks queries out entirely."""
  if cfg["class_loss"] == "softmax":
    class_weight = jnp.ones(cfg["num_classes"] + 1).at[-1].set(cfg["eos_coef"])
    return cross_entropy(cls_logits, classes, class_weight=class_weight, where=keep,
                         axis_name=cfg["axis_name"])
  if cfg["class_loss"] == "focal":
    return sigmoid_focal_loss(cls_logits, classes, alpha=cfg["focal_alpha"],
                              gamma=cfg["focal_gamma"], where=keep, reduction="sum") / num_boxes
  # RT-DETR's IoU-aware classification: the target score is the (constant) IoU of the query's
  # box with its target, on the target's class; BCE weighted by alpha * p^gamma off it.
  iou = jax.lax.stop_gradient(box_iou(box_preds, tgt_boxes, box_format="cxcywh"))
  one_hot = jax.nn.one_hot(classes, cfg["num_classes"], dtype=cls_logits.dtype)
  score = one_hot * jnp.where(target >= 0, iou, 0)[..., None]
  p = jax.lax.stop_gradient(jax.nn.sigmoid(cls_logits))
  weight = cfg["varifocal_alpha"] * p**cfg["focal_gamma"] * (1 - one_hot) + score
  return binary_cross_entropy(cls_logits, score, weight=weight, where=keep,
                              reduction="sum") / num_boxes


def _query_losses(cls_logits: Array, box_preds: Array, target: Array, keep: Array | None,
                  gt_boxes: Array, gt_labels: Array, num_boxes: Array,
                  cfg: dict) -> tuple[Array, Array, Array]:
  """Class, L1 and GIoU losses of queries ``[B, Q]`` assigned to targets ``target`` (-1: no
  object); the box terms sum over the assigned queries and divide by ``num_boxes``."""
  assigned = target >= 0
  index = jnp.maximum(target, 0)
  tgt_boxes = jnp.take_along_axis(gt_boxes, index[..., None], axis=-2)
  bbox = l1_loss(box_preds, tgt_boxes, where=assigned, reduction="sum") / num_boxes
  giou = giou_loss(box_preds, tgt_boxes, eps=0.0, box_format="cxcywh", where=assigned,
                   reduction="sum") / num_boxes
  classes = jnp.where(assigned, jnp.take_along_axis(gt_labels, index, -1), cfg["num_classes"])
  cls = _class_loss(cls_logits, box_preds, tgt_boxes, target, classes, keep, num_boxes, cfg)
  return cls, bbox, giou


def _layer_losses(cls_logits: Array, box_preds: Array, gt_boxes: Array, gt_labels: Array,
                  gt_mask: Array, num_boxes: Array, cfg: dict) -> tuple[Array, Array, Array]:
  """Class, L1 and GIoU losses of one decoder layer, matched on its own."""
  cost = detr_matching_cost(
      jax.lax.stop_gradient(cls_logits), jax.lax.stop_gradient(box_preds), gt_boxes, gt_labels,
      class_loss=cfg["class_loss"], class_cost=cfg["class_cost"], bbox_cost=cfg["bbox_cost"],
      giou_cost=cfg["giou_cost"], focal_alpha=cfg["focal_alpha"],
      focal_gamma=cfg["focal_gamma"])
  matching = hungarian_matching(cost, valid=gt_mask)
  return _query_losses(cls_logits, box_preds, matching.target_index, None, gt_boxes, gt_labels,
                       num_boxes, cfg)


def dn_targets(num_queries: int, gt_mask: Array, negatives: bool) -> tuple[Array, Array, int]:
  """The known targets of denoising queries ``[B, D]``: ``(target, keep, groups)``.

  Group ``g`` holds a noised copy of each padded target ``j`` at query ``g*M + j`` (DN-DETR),
  or, with ``negatives``, positive copies at ``2gM + j`` and negative ones at ``2gM + M + j``
  (DINO's contrastive denoising, as RT-DETR). ``target`` is ``j`` for positive copies of real
  targets and -1 ("no object") for negative ones; copies of padded targets are not kept.
  """
  m = gt_mask.shape[-1]
  size = 2 * m if negatives else m
  if m == 0 or num_queries % size:
    raise ValueError(f"denoising queries must come in groups of {size} = "
                     f"{'2 * ' if negatives else ''}M (M={m} padded targets"
                     f"{', positive then negative copies' if negatives else ''}), got "
                     f"D={num_queries}; pad every group to M copies.")
  offset = jnp.arange(num_queries) % size
  copy_of = offset % m
  keep = jnp.take(gt_mask, copy_of, axis=-1)
  positive = jnp.broadcast_to(offset < m, keep.shape)
  target = jnp.where(keep & positive, jnp.broadcast_to(copy_of, keep.shape), -1).astype(jnp.int32)
  return target, keep, num_queries // size


def _check_inputs(cls_logits, box_preds, gt_boxes, gt_labels, gt_mask, num_classes, class_loss):
  channels = num_classes + 1 if class_loss == "softmax" else num_classes
  if cls_logits.ndim != 3 or cls_logits.shape[-1] != channels:
    hint = ("num_classes + 1 (the last is 'no object')" if class_loss == "softmax"
            else "num_classes (no 'no object' channel)")
    raise ValueError(f"`cls_logits` must be [B, Q, {channels}] for class_loss={class_loss!r}: "
                     f"{hint}; got {cls_logits.shape}.")
  if box_preds.shape != cls_logits.shape[:2] + (4,):
    raise ValueError(f"`box_preds` must be [B, Q, 4] = {cls_logits.shape[:2] + (4,)}, got "
                     f"{box_preds.shape}.")
  b = cls_logits.shape[0]
  if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[-1] != 4:
    raise ValueError(f"`gt_boxes` must be [B, M, 4] with B={b}, got {gt_boxes.shape}.")
  check_targets_mask(gt_labels, gt_mask, gt_boxes.shape[:2])


def _check_aux(aux_cls_logits, aux_box_preds, cls_logits, box_preds):
  if (aux_cls_logits is None) != (aux_box_preds is None):
    raise ValueError("pass both `aux_cls_logits` and `aux_box_preds` (or neither).")
  if aux_cls_logits is None:
    return None, None
  aux_cls_logits, aux_box_preds = as_float(aux_cls_logits), as_float(aux_box_preds)
  if (aux_cls_logits.shape[1:] != cls_logits.shape
      or aux_box_preds.shape != aux_cls_logits.shape[:1] + box_preds.shape):
    raise ValueError(f"aux layers must be stacked [L, B, Q, ...]: `aux_cls_logits` "
                     f"[L, *{cls_logits.shape}] and `aux_box_preds` [L, *{box_preds.shape}], got "
                     f"{aux_cls_logits.shape} and {aux_box_preds.shape}.")
  return aux_cls_logits, aux_box_preds


def _check_dn(dn_cls_logits, dn_box_preds, cls_logits):
  if (dn_cls_logits is None) != (dn_box_preds is None):
    raise ValueError("pass both `dn_cls_logits` and `dn_box_preds` (or neither).")
  if dn_cls_logits is None:
    return None, None
  dn_cls_logits, dn_box_preds = as_float(dn_cls_logits), as_float(dn_box_preds)
  b, _, k = cls_logits.shape
  if (dn_cls_logits.ndim not in (3, 4) or dn_cls_logits.shape[-3] != b
      or dn_cls_logits.shape[-1] != k or dn_box_preds.shape != dn_cls_logits.shape[:-1] + (4,)):
    raise ValueError(f"denoising queries must be `dn_cls_logits` [B, D, {k}] and `dn_box_preds` "
                     f"[B, D, 4] with B={b} (or stacked [L, B, D, ...]), got "
                     f"{dn_cls_logits.shape} and {dn_box_preds.shape}.")
  return dn_cls_logits, dn_box_preds


def detr_loss(cls_logits: ArrayLike, box_preds: ArrayLike, gt_boxes: ArrayLike,
              gt_labels: ArrayLike, gt_mask: ArrayLike, *, num_classes: int,
              class_loss: str = "softmax", eos_coef: float = 0.1, cls_weight: float = 1.0,
              bbox_weight: float = 5.0, giou_weight: float = 2.0, class_cost: float = 1.0,
              bbox_cost: float = 5.0, giou_cost: float = 2.0, focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, varifocal_alpha: float = 0.75,
              aux_cls_logits: ArrayLike | None = None, aux_box_preds: ArrayLike | None = None,
              dn_cls_logits: ArrayLike | None = None, dn_box_preds: ArrayLike | None = None,
              dn_negatives: bool = True, axis_name: Any = None) -> dict[str, Array]:
  r"""The set prediction loss of DETR (and Deformable-DETR's, RT-DETR's and DINO's forms).

  Each decoder layer's queries are matched to the real targets by
  :func:`jaxloss.hungarian_matching` on :func:`jaxloss.detr_matching_cost`
  (no gradient through the matching); then, with
  :math:`N = \max(\mathrm{pmean}(\#\text{real targets}), 1)`:

  .. math::
     \mathcal{L}_\mathrm{bbox} = \frac{1}{N} \sum_{m} \lVert b_{\sigma(m)} - \hat b_m \rVert_1,
     \qquad
     \mathcal{L}_\mathrm{giou} = \frac{1}{N} \sum_{m} \bigl(1 - \mathrm{GIoU}(b_{\sigma(m)},
     \hat b_m)\bigr)

  over the real targets :math:`m` and their queries :math:`\sigma(m)`, and the
  class loss over all queries, whose target is the matched label or "no object":

  * ``"softmax"`` (DETR, Carion et al. 2020, https://arxiv.org/abs/2005.12872):
    ``num_classes + 1`` logits, the last "no object"; cross entropy with class
    weight ``eos_coef`` on "no object", as a weighted mean over all ``B x Q``
    queries (facebookresearch/detr ``SetCriterion.loss_labels``);
  * ``"focal"`` (Deformable-DETR, Zhu et al. 2020, https://arxiv.org/abs/2010.04159):
    ``num_classes`` logits; sigmoid focal loss summed over queries and classes,
    divided by :math:`N`;
  * ``"varifocal"`` (RT-DETR, Zhao et al. 2023, https://arxiv.org/abs/2304.08069, and
    D-FINE; IoU-aware classification): ``num_classes`` logits; with the one-hot
    target :math:`y` of the matched label (0 for "no object") and the target score
    :math:`t = y \cdot \mathrm{IoU}(b_q, \hat b_{\sigma^{-1}(q)})` (a constant: no gradient
    through the IoU), :math:`\frac{1}{N} \sum_{q,c} w\, \mathrm{BCE}(x_{qc}, t_{qc})` with
    :math:`w = \alpha_v\, \bar p^\gamma (1 - y) + t`, :math:`\bar p = \sigma(x)` also
    constant (RT-DETR ``SetCriterion.loss_labels_vfl``, whose ``mean(1).sum() * Q /
    num_boxes`` is this sum over :math:`N`). It is not :func:`jaxloss.varifocal_loss`
    (mmdetection's form): that one differentiates through :math:`\bar p` and weights a
    matched class of IoU 0 as a negative. The matching uses the focal cost.

  ``loss = cls_weight * cls + bbox_weight * bbox + giou_weight * giou``, summed
  over the last layer, each aux layer (each matched on its own, DETR's
  ``aux_loss``) and the denoising layers. Keyword correspondence with DETR: ``eos_coef``,
  ``cls_weight`` (``weight_dict['loss_ce']``; 2 in Deformable-DETR),
  ``bbox_weight`` (``bbox_loss_coef``), ``giou_weight`` (``giou_loss_coef``),
  ``class_cost`` / ``bbox_cost`` / ``giou_cost`` (``set_cost_*``); with RT-DETR:
  ``varifocal_alpha`` and ``focal_gamma`` (the criterion's ``alpha``, ``gamma``),
  ``focal_alpha`` (the matcher's ``alpha``), ``cls_weight`` (``loss_vfl``), ``class_cost=2``.

  **Denoising queries** (DN-DETR, Li et al. 2022, https://arxiv.org/abs/2203.01305; DINO,
  Zhang et al. 2022, https://arxiv.org/abs/2203.03605): ``dn_cls_logits`` and
  ``dn_box_preds`` are the decoder outputs of noised copies of the ground truth,
  laid out in static groups over the padded targets ``M``: with ``dn_negatives``
  (DINO's contrastive denoising, as RT-DETR), group ``g`` holds the positive copy of
  target ``j`` at query ``2gM + j`` and its negative copy at ``2gM + M + j``; without, the
  copy of target ``j`` is at ``gM + j`` (DN-DETR). ``D`` must be a multiple of the group
  size; the number of groups is :math:`G = D / (2M)` (or :math:`D / M`). These pairs skip
  the matching and go through the same three terms: positive copies of real targets
  take their target's label and box, negative copies are "no object" (no box terms),
  and the copies of padded targets are left out entirely (DINO pads each group to the
  batch's largest target count and classifies those padding queries as no object; here
  a padded target never changes the loss). The focal and varifocal class terms and the
  box terms divide by :math:`N G` (DINO's ``num_boxes * scalar``, RT-DETR's ``num_boxes *
  dn_num_group``); the softmax class term stays a weighted mean over the counted queries.

  With ``axis_name``, :math:`N` and the softmax loss's weight total are
  averaged over that axis (DETR's ``all_reduce`` of ``num_boxes``), so the
  ``pmean`` of per-device losses is the loss of the whole batch. With no real
  target, the box terms are exactly 0 with zero gradients.

  All layers (output and aux) are matched and scored by one ``vmap`` over the
  stacked layer axis, so the solver and the loss graph are compiled once whatever
  the number of layers.

  Args:
    cls_logits: ``[B, Q, num_classes + 1]`` (softmax) or ``[B, Q, num_classes]`` (focal,
      varifocal).
    box_preds: ``[B, Q, 4]`` normalised ``cxcywh`` (sigmoid outputs).
    gt_boxes: ``[B, M, 4]`` normalised ``cxcywh``; padded rows may hold anything.
    gt_labels: ``[B, M]`` integer labels in ``[0, num_classes)``.
    gt_mask: ``[B, M]`` bool, the real targets; ``M <= Q``.
    num_classes: number of object classes.
    class_loss: ``"softmax"``, ``"focal"`` or ``"varifocal"``.
    eos_coef: class weight of "no object" (softmax).
    cls_weight, bbox_weight, giou_weight: weights of the three losses.
    class_cost, bbox_cost, giou_cost, focal_alpha, focal_gamma: of the matching cost
      (``focal_*`` also of the focal loss, ``focal_gamma`` of the varifocal loss).
    varifocal_alpha: :math:`\alpha_v`, the weight of the negatives of the varifocal loss.
    aux_cls_logits, aux_box_preds: ``[L, B, Q, ...]`` intermediate decoder layers.
    dn_cls_logits, dn_box_preds: ``[B, D, K]`` and ``[B, D, 4]`` denoising queries
      (or stacked ``[L', B, D, ...]``, one per decoder layer), in the layout above.
    dn_negatives: whether each denoising group also holds negative copies.
    axis_name: mapped axis over which the normalisers are averaged.

  Returns:
    ``{"loss", "cls_loss", "bbox_loss", "giou_loss", "num_boxes"}`` (scalars,
    unweighted terms of the last layer), plus ``"aux_cls_loss"``,
    ``"aux_bbox_loss"`` and ``"aux_giou_loss"`` ``[L]`` with aux layers, and
    ``"dn_cls_loss"``, ``"dn_bbox_loss"``, ``"dn_giou_loss"`` (scalars, or ``[L']``
    for stacked denoising layers) with denoising queries.
  """
  check_choice("class_loss", class_loss, CLASS_LOSSES)
  cls_logits, box_preds, gt_boxes = (as_float(x) for x in (cls_logits, box_preds, gt_boxes))
  gt_labels, gt_mask = canonical_labels(gt_labels, "gt_labels"), jnp.asarray(gt_mask)
  _check_inputs(cls_logits, box_preds, gt_boxes, gt_labels, gt_mask, num_classes, class_loss)
  aux_cls_logits, aux_box_preds = _check_aux(aux_cls_logits, aux_box_preds, cls_logits, box_preds)
  dn_cls_logits, dn_box_preds = _check_dn(dn_cls_logits, dn_box_preds, cls_logits)
  gt_boxes = fill_masked(gt_boxes, gt_mask, jnp.asarray(_UNIT_BOX, gt_boxes.dtype))
  num_boxes = num_targets(gt_mask, axis_name)
  cfg = dict(num_classes=num_classes, class_loss=class_loss, eos_coef=eos_coef,
             class_cost=class_cost, bbox_cost=bbox_cost, giou_cost=giou_cost,
             focal_alpha=focal_alpha, focal_gamma=focal_gamma, varifocal_alpha=varifocal_alpha,
             axis_name=axis_name)
  layers_cls, layers_box = cls_logits[None], box_preds[None]
  if aux_cls_logits is not None and aux_box_preds is not None:  # both or neither (checked)
    # One vmapped solver for all layers: the matching loop is compiled once, not L + 1 times.
    layers_cls = jnp.concatenate([aux_cls_logits, layers_cls])
    layers_box = jnp.concatenate([aux_box_preds, layers_box])
  terms = jax.vmap(lambda c, b: _layer_losses(c, b, gt_boxes, gt_labels, gt_mask, num_boxes, cfg))(
      layers_cls, layers_box)
  weights = jnp.asarray([cls_weight, bbox_weight, giou_weight], terms[0].dtype)
  total = jnp.sum(weights[:, None] * jnp.stack(terms))
  out = {"cls_loss": terms[0][-1], "bbox_loss": terms[1][-1], "giou_loss": terms[2][-1],
         "num_boxes": num_boxes}
  if aux_cls_logits is not None:
    out.update(aux_cls_loss=terms[0][:-1], aux_bbox_loss=terms[1][:-1],
               aux_giou_loss=terms[2][:-1])
  if dn_cls_logits is not None and dn_box_preds is not None:  # both or neither (checked)
    dn_cls = as_float(dn_cls_logits)
    dn_box = as_float(dn_box_preds)
    target, keep, groups = dn_targets(dn_cls.shape[-2], gt_mask, dn_negatives)
    stacked = dn_cls.ndim == 4

    def dn_layer(c, b):
      # Copies of padded targets may hold anything (NaN included): they never reach a loss.
      c, b = fill_masked(c, keep), fill_masked(b, keep, jnp.asarray(_UNIT_BOX, b.dtype))
      return _query_losses(c, b, target, keep, gt_boxes, gt_labels, num_boxes * groups, cfg)

    dn_terms = jax.vmap(dn_layer)(
        *((dn_cls, dn_box) if stacked else (dn_cls[None], dn_box[None])))
    total = total + jnp.sum(weights[:, None] * jnp.stack(dn_terms))
    out.update({f"dn_{k}": t if stacked else t[0]
                for k, t in zip(("cls_loss", "bbox_loss", "giou_loss"), dn_terms, strict=True)})
  return {"loss": total, **out}
