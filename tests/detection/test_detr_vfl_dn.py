"""detr_loss: RT-DETR's varifocal class loss and DN-DETR / DINO denoising groups (float64 numpy
references written from the criteria's formulas), and hungarian_matching's host method."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

K, M, Q = 4, 3, 6
WEIGHTS = dict(cls_weight=1.0, bbox_weight=5.0, giou_weight=2.0)


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def bce(x, t):
  return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def xyxy(b):
  return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def iou_giou(a, b):
  """IoU and GIoU of aligned cxcywh boxes (float64)."""
  a, b = xyxy(a), xyxy(b)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a) + area(b) - inter
  hull = np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2])
  hull = hull[..., 0] * hull[..., 1]
  return inter / union, inter / union - (hull - union) / hull


def reference(logits, boxes, targets, keep, gt_boxes, gt_labels, norm, form, consts=None):
  """Class, L1 and GIoU terms of queries ``[B, Q]`` assigned to ``targets`` (-1: no object),
  ``keep`` the counted queries; ``consts`` are the detached IoU and sigmoid of varifocal."""
  logits, boxes = np.asarray(logits, np.float64), np.asarray(boxes, np.float64)
  pos = targets >= 0
  idx = np.maximum(targets, 0)
  tgt = np.take_along_axis(np.asarray(gt_boxes, np.float64), idx[..., None], 1)
  iou, giou = iou_giou(boxes, tgt)
  l1 = np.sum(np.abs(boxes - tgt).sum(-1) * pos) / norm
  g = np.sum((1 - giou) * pos) / norm
  classes = np.where(pos, np.take_along_axis(gt_labels, idx, 1), K)
  y = np.eye(K + 1)[classes][..., :K]
  if form == "focal":
    p = sigmoid(logits)
    pt = p * y + (1 - p) * (1 - y)
    loss = (0.25 * y + 0.75 * (1 - y)) * (1 - pt) ** 2 * bce(logits, y)
    cls = np.sum(loss * keep[..., None]) / norm
  else:
    iou_c, p_c = consts if consts is not None else (iou, sigmoid(logits))
    t = y * np.where(pos, iou_c, 0)[..., None]
    w = 0.75 * p_c**2 * (1 - y) + t
    cls = np.sum(w * bce(logits, t) * keep[..., None]) / norm
  return np.array([cls, l1, g]), (iou, sigmoid(logits))


def numeric_grad(f, x, h=1e-6):
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = h
    g[i] = (f(x + d) - f(x - d)) / (2 * h)
  return g


def boxes_near(rng, centre, spread, shape):
  return np.concatenate([np.clip(centre + rng.normal(0, spread, shape + (2,)), 0.1, 0.9),
                         rng.uniform(0.1, 0.3, shape + (2,))], -1)


def matched_case():
  """Two images whose optimal matching is known: query ``assign[b, j]`` sits on target j."""
  rng = np.random.default_rng(0)
  gt_boxes = boxes_near(rng, 0.5, 0.2, (2, M))
  gt_labels = np.array([[0, 3, 1], [2, 2, 0]])
  gt_mask = np.array([[True, True, True], [True, False, True]])
  assign = np.array([[4, 1, 3], [0, 5, 2]])
  boxes = rng.uniform(0.4, 0.6, (2, Q, 4)) * [1, 1, 0.05, 0.05]   # small boxes, far from none
  logits = rng.normal(0, 1, (2, Q, K))
  targets = np.full((2, Q), -1)
  for b in range(2):
    for j in range(M):
      if gt_mask[b, j]:
        q = assign[b, j]
        boxes[b, q] = gt_boxes[b, j] + rng.normal(0, 0.01, 4)
        logits[b, q, gt_labels[b, j]] += 4
        targets[b, q] = j
  return logits, boxes, gt_boxes, gt_labels, gt_mask, targets


def loss_fn(form, **kw):
  def fn(logits, boxes, *gt, **more):
    out = jaxloss.detr_loss(logits, boxes, *gt, num_classes=K, class_loss=form, class_cost=2.0,
                            **WEIGHTS, **kw, **more)
    return out["loss"], out
  return fn


def test_varifocal_values_and_gradients_match_rtdetr_formula():
  logits, boxes, gt_boxes, gt_labels, gt_mask, targets = matched_case()
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  cost = jaxloss.detr_matching_cost(f32(logits), f32(boxes), f32(gt_boxes), gt_labels,
                                    class_loss="varifocal", class_cost=2.0)
  matching = jaxloss.hungarian_matching(cost, valid=gt_mask)
  np.testing.assert_array_equal(np.asarray(matching.target_index), targets)   # as built
  (_, out), (g_logits, g_boxes) = jax.jit(jax.value_and_grad(
      loss_fn("varifocal"), argnums=(0, 1), has_aux=True))(
      f32(logits), f32(boxes), f32(gt_boxes), gt_labels, gt_mask)
  keep = np.ones(targets.shape, bool)
  ref, consts = reference(logits, boxes, targets, keep, gt_boxes, gt_labels, 5.0, "varifocal")
  np.testing.assert_allclose([out["cls_loss"], out["bbox_loss"], out["giou_loss"]], ref,
                             rtol=1e-5)
  np.testing.assert_allclose(out["loss"], ref @ [1.0, 5.0, 2.0], rtol=1e-5)
  total = lambda lg, bx: reference(lg, bx, targets, keep, gt_boxes, gt_labels, 5.0, "varifocal",
                                   consts)[0] @ [1.0, 5.0, 2.0]
  np.testing.assert_allclose(g_logits, numeric_grad(lambda x: total(x, boxes), logits),
                             atol=2e-5)
  np.testing.assert_allclose(g_boxes, numeric_grad(lambda x: total(logits, x), boxes), atol=2e-4)
  # IoU and p are constants: the class term's gradient is w * (p - t) / N.
  y = np.eye(K + 1)[np.where(targets >= 0, np.take_along_axis(gt_labels, np.maximum(targets, 0),
                                                               1), K)][..., :K]
  t = y * np.where(targets >= 0, consts[0], 0)[..., None]
  w = 0.75 * consts[1] ** 2 * (1 - y) + t
  np.testing.assert_allclose(g_logits, w * (consts[1] - t) / 5.0, atol=1e-6)


def dn_layout(gt_mask, groups, negatives):
  """Per query of the denoising layout: its target (-1: negative) and whether it counts."""
  m = gt_mask.shape[1]
  size = 2 * m if negatives else m
  off = np.arange(groups * size) % size
  keep = gt_mask[:, off % m]
  return np.where(keep & (off < m), off % m, -1), keep


def dn_case(negatives=True, groups=2):
  logits, boxes, gt_boxes, gt_labels, gt_mask, _ = matched_case()
  rng = np.random.default_rng(1)
  d = groups * M * (2 if negatives else 1)
  targets, keep = dn_layout(gt_mask, groups, negatives)
  dn_boxes = np.take_along_axis(gt_boxes, np.maximum(targets, 0)[..., None], 1)
  dn_boxes = dn_boxes + rng.normal(0, 0.03, dn_boxes.shape) * [1, 1, 0.3, 0.3]
  dn_logits = rng.normal(0, 1.5, (2, d, K))
  return (logits, boxes, gt_boxes, gt_labels, gt_mask), dn_logits, dn_boxes, targets, keep


@pytest.mark.parametrize("form,negatives", [("focal", True), ("varifocal", True),
                                            ("focal", False)])
def test_denoising_groups_match_dino_formula(form, negatives):
  args, dn_logits, dn_boxes, targets, keep = dn_case(negatives)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  fn = loss_fn(form, dn_negatives=negatives)

  def with_dn(dn_logits, dn_boxes):
    return fn(f32(args[0]), f32(args[1]), f32(args[2]), args[3], args[4],
              dn_cls_logits=dn_logits, dn_box_preds=dn_boxes)

  (_, out), (g_logits, g_boxes) = jax.jit(jax.value_and_grad(with_dn, (0, 1), has_aux=True))(
      f32(dn_logits), f32(dn_boxes))
  norm = 5.0 * 2                              # real targets x groups
  ref, consts = reference(dn_logits, dn_boxes, targets, keep, args[2], args[3], norm, form)
  np.testing.assert_allclose([out["dn_cls_loss"], out["dn_bbox_loss"], out["dn_giou_loss"]],
                             ref, rtol=1e-5)
  matched = np.array([out["cls_loss"], out["bbox_loss"], out["giou_loss"]])
  np.testing.assert_allclose(out["loss"], (matched + ref) @ [1.0, 5.0, 2.0], rtol=1e-5)
  total = lambda lg, bx: reference(lg, bx, targets, keep, args[2], args[3], norm, form,
                                   consts)[0] @ [1.0, 5.0, 2.0]
  np.testing.assert_allclose(g_logits, numeric_grad(lambda x: total(x, dn_boxes), dn_logits),
                             atol=2e-5)
  np.testing.assert_allclose(g_boxes, numeric_grad(lambda x: total(dn_logits, x), dn_boxes),
                             atol=2e-4)
  assert not np.any(np.asarray(g_logits)[~keep]) and not np.any(np.asarray(g_boxes)[~keep])


def relayout(x, gt_mask, extra, fill, negatives=True, groups=2):
  """The denoising queries of ``M`` targets laid out for ``M + extra`` padded ones."""
  b, m = gt_mask.shape
  size = 2 if negatives else 1
  x = x.reshape(b, groups, size, m, -1)
  pad = np.full((b, groups, size, extra, x.shape[-1]), fill)
  return np.concatenate([x, pad], 3).reshape(b, groups * size * (m + extra), -1)


def test_denoising_padding_stacked_layers_and_one_trace():
  args, dn_logits, dn_boxes, _, _ = dn_case()
  fn, counter = jit_counting(functools.partial(jaxloss.detr_loss, num_classes=K,
                                               class_loss="focal"))
  ref = fn(*args, dn_cls_logits=dn_logits, dn_box_preds=dn_boxes)
  extra = 2
  pad = lambda x, fill: np.concatenate([x, np.full((2, extra) + x.shape[2:], fill, x.dtype)], 1)
  padded = (*args[:2], pad(args[2], np.nan), pad(args[3], 7), pad(args[4], False))
  with jax.debug_nans(True):
    out = jax.jit(functools.partial(jaxloss.detr_loss, num_classes=K, class_loss="focal"))(
        *padded, dn_cls_logits=relayout(dn_logits, args[4], extra, np.nan),
        dn_box_preds=relayout(dn_boxes, args[4], extra, np.nan))
  for key in ref:
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-6, err_msg=key)
  stacked = fn(*args, dn_cls_logits=np.stack([dn_logits, dn_logits + 1]),
               dn_box_preds=np.stack([dn_boxes, dn_boxes]))
  assert stacked["dn_cls_loss"].shape == (2,)
  np.testing.assert_allclose(stacked["dn_bbox_loss"][0], ref["dn_bbox_loss"], rtol=1e-6)
  traced = counter.count                      # the plain and the stacked layout
  assert traced == 2
  for n in range(M + 1):
    mask = np.broadcast_to(np.arange(M) < n, args[4].shape)
    out = fn(*args[:4], mask, dn_cls_logits=dn_logits, dn_box_preds=dn_boxes)
    assert_finite(out)
  assert counter.count == traced              # no retrace for 0..M real targets
  assert float(out["dn_bbox_loss"]) > 0 and float(fn(
      *args[:4], mask & False, dn_cls_logits=dn_logits, dn_box_preds=dn_boxes)["dn_bbox_loss"]) == 0


def test_varifocal_and_denoising_hostile_inputs_are_finite():
  args, dn_logits, dn_boxes, _, _ = dn_case()
  logits = np.random.default_rng(3).choice([-1e4, 1e4, 0.0], size=args[0].shape)
  boxes = args[1].copy()
  boxes[..., 2] = 0.0
  dn_boxes = dn_boxes.copy()
  dn_boxes[..., 3] = 0.0
  for form in ("varifocal", "focal"):
    fn = loss_fn(form)
    grads = jax.grad(lambda *a, fn=fn, **kw: fn(*a, **kw)[0], argnums=(0, 1))
    with jax.debug_nans(True):
      assert_finite(jax.jit(grads)(logits, boxes, *args[2:], dn_cls_logits=dn_logits * 1e4,
                                   dn_box_preds=dn_boxes))


def test_denoising_errors_and_registry():
  args, dn_logits, dn_boxes, _, _ = dn_case()
  call = functools.partial(jaxloss.detr_loss, *args, num_classes=K, class_loss="focal")
  with pytest.raises(ValueError, match="groups of 6"):
    call(dn_cls_logits=dn_logits[:, :-1], dn_box_preds=dn_boxes[:, :-1])
  with pytest.raises(ValueError, match="groups of 3"):
    call(dn_cls_logits=dn_logits[:, :-1], dn_box_preds=dn_boxes[:, :-1], dn_negatives=False)
  with pytest.raises(ValueError, match="both `dn_cls_logits` and `dn_box_preds`"):
    call(dn_cls_logits=dn_logits)
  with pytest.raises(ValueError, match="denoising queries must be"):
    call(dn_cls_logits=dn_logits[..., :2], dn_box_preds=dn_boxes)
  with pytest.raises(ValueError, match="class_loss must be one of"):
    jaxloss.detr_loss(*args, num_classes=K, class_loss="vfl")
  loss = jaxloss.build_loss(dict(type="DETRLoss", num_classes=K, class_loss="varifocal",
                                 varifocal_alpha=0.75))
  np.testing.assert_allclose(loss(*args)["loss"], jaxloss.detr_loss(*args, num_classes=K,
                                                            class_loss="varifocal")["loss"],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="dn_negatives"):
    jaxloss.build_loss(dict(type="DETRLoss", num_classes=K, dn_negatives=False))


RTDETR = load_fixture("rtdetr_criterion.npz")


@pytest.mark.parametrize("gt_set", ["main", "dn"])
def test_varifocal_and_denoising_match_rtdetr_criterion(gt_set):
  ref = lambda k: RTDETR[f"{gt_set}__{k}"]
  f32 = lambda k: jnp.asarray(ref(k), jnp.float32)
  dn = gt_set == "dn"

  def fn(logits, boxes, dn_logits, dn_boxes):
    out = jaxloss.detr_loss(logits[-1], boxes[-1], f32("gt_boxes"), ref("gt_labels"),
                            ref("gt_mask"), num_classes=K, class_loss="varifocal",
                            class_cost=2.0, aux_cls_logits=logits[:-1], aux_box_preds=boxes[:-1],
                            dn_cls_logits=dn_logits, dn_box_preds=dn_boxes)
    return out["loss"], out

  args = (f32("logits"), f32("box_preds")) + ((f32("dn_logits"), f32("dn_box_preds")) if dn
                                              else (None, None))
  (_, out), grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3) if dn else (0, 1),
                                               has_aux=True))(*args)
  terms = [("cls_loss", "loss_vfl", 1.0), ("bbox_loss", "loss_bbox", 5.0),
           ("giou_loss", "loss_giou", 2.0)]
  for ours, theirs, w in terms:
    np.testing.assert_allclose(out[ours], ref(theirs) / w, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(out[f"aux_{ours}"], [ref(f"{theirs}_aux_0") / w], rtol=2e-6,
                               atol=1e-7)
    if dn:
      np.testing.assert_allclose(out[f"dn_{ours}"], [ref(f"{theirs}_dn_{i}") / w for i in range(2)],
                                 rtol=2e-6, atol=1e-7)
  np.testing.assert_allclose(out["loss"], ref("total"), rtol=2e-6)
  names = ["logits", "box_preds", "dn_logits", "dn_box_preds"][:len(grads)]
  for g, name in zip(grads, names, strict=True):
    np.testing.assert_allclose(g, ref(f"grad_{name}"), rtol=1e-5, atol=2e-6, err_msg=name)
