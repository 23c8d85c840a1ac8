"""FCOS points, target assignment and loss: hand cases, a numpy reference,
mmdetection 3.3 reference numbers (tests/fixtures/mmdet/mmdet_fcos.npz), padding
invariance, retracing, sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
import jaxloss as fcos
from jaxloss._src.kernels import fcos as fcos_kernels
from jaxloss.boxes import iou
from tests.utils import assert_finite, jit_counting, load_fixture

try:
  from jax import enable_x64
except ImportError:  # jax < 0.8
  from jax.experimental import enable_x64

STRIDES = (8, 16, 32, 64, 128)
RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, np.inf))
SHAPES_64 = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64x64 image
OFFSETS = np.cumsum([0] + [h * w for h, w in SHAPES_64])
NAN = np.nan


def point_index(level, x, y):
  """Index in the concatenated points of the point at pixel (x, y) of a level."""
  s = STRIDES[level]
  w = SHAPES_64[level][1]
  return OFFSETS[level] + int(y // s) * w + int(x // s)


def np_assign(points, boxes, labels, mask, num_classes, center_sampling, radius=1.5,
              norm_on_bbox=True):
  """Loop reference written from the FCOS/mmdetection rules, one image."""
  out_labels, out_ltrb = [], []
  for level, pts in enumerate(points):
    s, (lo, hi) = STRIDES[level], RANGES[level]
    for x, y in np.asarray(pts, np.float64):
      best, best_area = None, np.inf
      for m in range(len(boxes)):
        if not mask[m]:
          continue
        x1, y1, x2, y2 = boxes[m]
        ltrb = np.array([x - x1, y - y1, x2 - x, y2 - y])
        if center_sampling:
          cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
          r = s * radius
          region = (max(cx - r, x1), max(cy - r, y1), min(cx + r, x2), min(cy + r, y2))
          inside = min(x - region[0], y - region[1], region[2] - x, region[3] - y) > 0
        else:
          inside = ltrb.min() > 0
        area = (x2 - x1) * (y2 - y1)
        if inside and lo <= ltrb.max() <= hi and area < best_area:
          best, best_area = m, area
      if best is None:
        out_labels.append(num_classes)
        out_ltrb.append(np.zeros(4))
      else:
        x1, y1, x2, y2 = boxes[best]
        out_labels.append(labels[best])
        out_ltrb.append(np.array([x - x1, y - y1, x2 - x, y2 - y]) / (s if norm_on_bbox else 1))
  return np.array(out_labels), np.array(out_ltrb)


def np_centerness(ltrb):
  left, top, right, bottom = np.moveaxis(np.asarray(ltrb, np.float64), -1, 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    c = np.sqrt(np.minimum(left, right) / np.maximum(left, right)
                * np.minimum(top, bottom) / np.maximum(top, bottom))
  return np.where(np.min(ltrb, -1) > 0, c, 0.0)


# ---------------------------------------------------------------- points

def test_points_match_mmdet_and_layout():
  f = load_fixture("mmdet_fcos.npz")
  pts = fcos.fcos_points([tuple(s) for s in f["level_sizes"]], STRIDES)
  assert [p.shape for p in pts] == [(256, 2), (64, 2), (16, 2), (4, 2), (1, 2)]
  np.testing.assert_array_equal(np.concatenate(pts), f["points"])
  nhwc = fcos.fcos_points([(2, 16, 16, 3), (2, 8, 8, 3)], (8, 16))
  np.testing.assert_array_equal(nhwc[1][:3], [[8, 8], [24, 8], [40, 8]])
  with pytest.raises(ValueError, match="one stride per"):
    fcos.fcos_points([(4, 4)], (8, 16))
  with pytest.raises(ValueError, match=r"\(H, W\)"):
    fcos.fcos_points([(4, 4, 3)], (8,))


def test_centerness_targets():
  ltrb = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [0.0, 1.0, 2.0, 3.0],
                   [-1.0, 2.0, 2.0, 2.0], [1e-6, 3.0, 2.0, 1.0]], np.float32)
  np.testing.assert_allclose(fcos.centerness_targets(ltrb), np_centerness(ltrb), rtol=1e-6,
                             atol=1e-7)
  grad = jax.jit(jax.grad(lambda x: fcos.centerness_targets(x).sum()))(ltrb)
  assert_finite(grad)
  np.testing.assert_array_equal(grad[2:4], 0.0)


# ---------------------------------------------------------------- assignment by hand

TARGET_STATICS = ("num_classes", "center_sampling", "norm_on_bbox")
jit_targets = jax.jit(fcos.fcos_targets, static_argnames=TARGET_STATICS)


def hand_targets(boxes, labels, mask, center_sampling, **kw):
  pts = fcos.fcos_points(SHAPES_64, STRIDES)
  return jit_targets(pts, np.asarray(boxes, np.float32), np.asarray(labels, np.int32),
                           np.asarray(mask, bool), num_classes=5,
                           center_sampling=center_sampling, **kw)


HAND_BOXES = [
    [[0, 0, 40, 40], [16, 16, 48, 48]],      # two boxes, (20, 20) inside both
    [[-40, -40, 100, 100], [0, 0, 0, 0]],    # too large for level 0
    [[0, 0, 68, 40], [0, 0, 0, 0]],          # (4, 4): max distance exactly 64
    [[0, 0, 72, 40], [0, 0, 0, 0]],          # level-1 (8, 8): max distance exactly 64
    [[0, 0, 0, 0], [0, 0, 0, 0]],            # no boxes
    [[NAN, 3, -1e30, NAN], [5, 5, 20, 20]],  # all padding
    [[0, 0, 60, 60], [0, 0, 0, 0]],          # centre region 30 +- 12 at level 0
]
HAND_LABELS = [[1, 2], [3, 0], [4, 0], [2, 0], [0, 0], [1, 1], [1, 0]]
HAND_MASK = [[True, True], [True, False], [True, False], [True, False], [False, False],
             [False, False], [True, False]]


def test_assignment_cases_by_hand():
  lab, ltrb, ctr = map(np.asarray, hand_targets(HAND_BOXES, HAND_LABELS, HAND_MASK, False))
  p = point_index(0, 20, 20)
  assert lab[0, p] == 2
  np.testing.assert_allclose(ltrb[0, p], np.array([4, 4, 28, 28]) / 8)
  np.testing.assert_allclose(ctr[0, p], np.sqrt(4 / 28 * 4 / 28), rtol=1e-6)
  assert lab[0, point_index(0, 4, 4)] == 1  # only inside the larger box
  assert (lab[1, :OFFSETS[1]] == 5).all()
  assert lab[1, point_index(1, 8, 8)] == 3
  np.testing.assert_allclose(ltrb[1, point_index(1, 8, 8)], np.array([48, 48, 92, 92]) / 16)
  assert lab[2, point_index(0, 4, 4)] == 4
  assert lab[3, point_index(1, 8, 8)] == 2
  assert lab[3, point_index(0, 4, 4)] == 5  # max distance 68 > 64
  for image in (4, 5):
    assert (lab[image] == 5).all()
    assert (ltrb[image] == 0).all() and (ctr[image] == 0).all()
  background = lab == 5
  assert (ltrb[background] == 0).all() and (ctr[background] == 0).all()


def test_center_sampling_excludes_points_outside_the_radius():
  off = np.asarray(hand_targets(HAND_BOXES, HAND_LABELS, HAND_MASK, False)[0])[6]
  on = np.asarray(hand_targets(HAND_BOXES, HAND_LABELS, HAND_MASK, True)[0])[6]
  outer, centre = point_index(0, 12, 12), point_index(0, 28, 28)
  assert off[outer] == 1 and on[outer] == 5
  assert off[centre] == 1 and on[centre] == 1
  assert int((on < 5).sum()) < int((off < 5).sum())


@pytest.mark.parametrize("center_sampling", [False, True])
def test_assignment_matches_numpy_reference(center_sampling):
  rng = np.random.default_rng(5)
  b, m = 3, 6
  xy = rng.uniform(-10, 60, size=(b, m, 2))
  wh = rng.uniform(0.5, 80, size=(b, m, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  boxes[0, 1] = boxes[0, 3]  # equal areas: lowest index wins
  labels = rng.integers(0, 5, size=(b, m)).astype(np.int32)
  mask = rng.uniform(size=(b, m)) < 0.7
  pts = fcos.fcos_points(SHAPES_64, STRIDES)
  lab, ltrb, ctr = hand_targets(boxes, labels, mask, center_sampling)
  for i in range(b):
    ref_lab, ref_ltrb = np_assign(pts, boxes[i].astype(np.float64), labels[i], mask[i], 5,
                                  center_sampling)
    np.testing.assert_array_equal(lab[i], ref_lab)
    np.testing.assert_allclose(ltrb[i], ref_ltrb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ctr[i], np_centerness(ref_ltrb), rtol=1e-5, atol=1e-6)


def test_targets_errors():
  pts = fcos.fcos_points(SHAPES_64, STRIDES)
  boxes, labels, mask = np.zeros((1, 2, 4)), np.zeros((1, 2), np.int32), np.ones((1, 2), bool)
  kw = dict(num_classes=3)
  with pytest.raises(TypeError, match="per-level list"):
    fcos.fcos_targets(jnp.concatenate(pts), boxes, labels, mask, **kw)
  with pytest.raises(ValueError, match="one of each per pyramid level"):
    fcos.fcos_targets(pts[:3], boxes, labels, mask, **kw)
  with pytest.raises(ValueError, match=r"\[B, M, 4\]"):
    fcos.fcos_targets(pts, boxes[0], labels, mask, **kw)
  with pytest.raises(TypeError, match="boolean"):
    fcos.fcos_targets(pts, boxes, labels, mask.astype(int), **kw)


# ---------------------------------------------------------------- mmdetection targets

MMDET_CONFIGS = {
    # cfg: (gt set, center_sampling, norm_on_bbox, box_loss)
    "giou_cs": ("main", True, True, "giou"),
    "giou_nocs": ("main", False, True, "giou"),
    "iou_plain": ("main", False, False, "iou"),
    "giou_cs_empty1": ("empty1", True, True, "giou"),
    "giou_cs_allempty": ("allempty", True, True, "giou"),
}


@pytest.mark.parametrize("cfg", sorted(MMDET_CONFIGS))
def test_targets_match_mmdet(cfg):
  f = load_fixture("mmdet_fcos.npz")
  gt, cs, norm, _ = MMDET_CONFIGS[cfg]
  pts = fcos.fcos_points([tuple(s) for s in f["level_sizes"]], STRIDES)
  lab, ltrb, ctr = jit_targets(
      pts, f[f"gt_boxes_{gt}"], f[f"gt_labels_{gt}"], f[f"gt_mask_{gt}"], num_classes=3,
      center_sampling=cs, norm_on_bbox=norm)
  pos = f[f"{cfg}__pos_mask"]
  np.testing.assert_array_equal(lab, f[f"{cfg}__labels"])
  np.testing.assert_allclose(np.asarray(ltrb)[pos], f[f"{cfg}__bbox_targets"][pos], rtol=1e-6)
  np.testing.assert_allclose(ctr, f[f"{cfg}__centerness_targets"], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- loss

LOSS_STATICS = ("num_classes", "center_sampling", "norm_on_bbox", "box_loss", "focal_alpha",
                "focal_gamma")


def _value_and_grad(cls, box, ctr, gt_boxes, gt_labels, gt_mask, **kw):
  def total(heads):
    out = fcos.fcos_loss(*heads, gt_boxes, gt_labels, gt_mask, **kw)
    return out["loss"], out
  (_, out), grads = jax.value_and_grad(total, has_aux=True)((cls, box, ctr))
  return out, grads


# one compiled function shared by the tests below (its traces are counted)
loss_and_grad, TRACES = jit_counting(_value_and_grad, static_argnames=LOSS_STATICS)


def fixture_heads(f):
  return tuple([f[f"{k}_l{i}"] for i in range(5)]
               for k in ("cls_scores", "bbox_preds", "centernesses"))


def flat(levels):
  return np.concatenate([np.asarray(x).reshape(x.shape[0], -1, x.shape[-1]) for x in levels], 1)


def mmdet_loss(f, cfg, boxes=None, labels=None, mask=None):
  gt, cs, norm, box_loss = MMDET_CONFIGS[cfg]
  boxes = f[f"gt_boxes_{gt}"] if boxes is None else boxes
  labels = f[f"gt_labels_{gt}"] if labels is None else labels
  mask = f[f"gt_mask_{gt}"] if mask is None else mask
  return loss_and_grad(*fixture_heads(f), boxes, labels, mask, num_classes=3,
                       center_sampling=cs, norm_on_bbox=norm, box_loss=box_loss)


# giou_nocs's loss is covered piecewise (its targets above, its cls and centerness
# terms equal iou_plain's, its GIoU term giou_cs's); one compilation fewer.
@pytest.mark.parametrize("cfg", sorted(set(MMDET_CONFIGS) - {"giou_nocs"}))
def test_loss_and_gradients_match_mmdet(cfg):
  f = load_fixture("mmdet_fcos.npz")
  out, grads = mmdet_loss(f, cfg)
  ref = {"cls_loss": f[f"{cfg}__loss_cls"], "reg_loss": f[f"{cfg}__loss_bbox"],
         "centerness_loss": f[f"{cfg}__loss_centerness"], "loss": f[f"{cfg}__loss_total"],
         "num_pos": f[f"{cfg}__num_pos"]}
  for key, value in ref.items():
    np.testing.assert_allclose(out[key], value, rtol=2e-6, atol=1e-7, err_msg=key)
  cls_g, box_g, ctr_g = (flat(g) for g in grads)
  for mine, key in ((cls_g, "cls_scores"), (box_g, "bbox_preds"), (ctr_g[..., 0], "centernesses")):
    expected = f[f"{cfg}__grad_{key}"]
    np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
  if cfg == "giou_cs_allempty":  # no positives: exactly zero, with zero gradients
    assert out["reg_loss"] == 0 and out["centerness_loss"] == 0
    assert not box_g.any() and not ctr_g.any()


def test_plain_autodiff_path_matches_mmdet():
  # the default path's focal gradient is a custom_vjp computed level by level;
  # fused_kernels(False) (forward mode) traces plain jnp: same numbers
  f = load_fixture("mmdet_fcos.npz")
  with jaxloss.fused_kernels(False):
    out, grads = jax.jit(functools.partial(_value_and_grad, num_classes=3))(
        *fixture_heads(f), f["gt_boxes_main"], f["gt_labels_main"], f["gt_mask_main"])
  np.testing.assert_allclose(out["loss"], f["giou_cs__loss_total"], rtol=2e-6)
  cls_g = flat(grads[0])
  expected = f["giou_cs__grad_cls_scores"]
  np.testing.assert_allclose(cls_g, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_fused_switch_retraces_the_jitted_loss():
  # fcos_loss is jitted inside: the fused_kernels switch must be part of its cache key
  f = load_fixture("mmdet_fcos.npz")
  cls, box, ctr = fixture_heads(f)
  gt = (f["gt_boxes_main"], f["gt_labels_main"], f["gt_mask_main"])
  loss = lambda box: fcos.fcos_loss(cls, box, ctr, *gt, num_classes=3)["loss"]
  ones = [np.ones_like(x) for x in box]
  with jaxloss.fused_kernels(False):  # forward mode on the plain path
    _, tangent = jax.jvp(loss, (box,), (ones,))
  grads = jax.grad(loss)(box)  # the default path again
  np.testing.assert_allclose(tangent, sum(np.sum(g) for g in grads), rtol=1e-5)
  with pytest.raises(TypeError):  # a custom_vjp again, not the cached plain trace
    jax.jvp(loss, (box,), (ones,))


def _box_ctr_plain(box_levels, ctr_levels, box_targets, ctr_targets, positive):
  rows = fcos_kernels.box_and_centerness_rows(box_levels, ctr_levels)
  reg = iou.giou_loss(rows[:, :4], box_targets, box_format="ltrb", eps=fcos_kernels.BOX_EPS,
                      weight=ctr_targets, where=positive, reduction="sum")
  ctr = fcos.centerness_loss(rows[:, 4], ctr_targets, where=positive, reduction="sum")
  return reg, ctr


def test_box_centerness_kernel_equals_autodiff():
  # the analytic backward of the box + centerness terms against autodiff of
  # giou_loss and centerness_loss, in float64, on ties (a predicted side equal
  # to the target's, or the whole box), zero-width and inverted predictions,
  # disjoint boxes, and NaN in the rows that are not positive
  rng = np.random.default_rng(3)
  shapes = [(2, 3, 3), (2, 2, 2)]
  n = sum(int(np.prod(s)) for s in shapes)
  target = rng.uniform(0.2, 4, size=(n, 4))
  pred = rng.uniform(-1, 4, size=(n, 4))
  pred[0] = target[0]                       # identical box
  pred[1, 0], pred[2, 3] = target[1, 0], target[2, 3]  # one side tied
  pred[3, 0], pred[3, 2] = 1.5, -1.5        # zero width
  pred[4, :2], pred[4, 2:] = 1.0, -3.0      # inverted
  pred[5] = [-3.0, -3.0, 5.0, 5.0]          # disjoint from its target
  positive = rng.uniform(size=n) < 0.7
  positive[:6] = True
  pred[~positive] = np.nan
  ctr_logit = np.where(positive, rng.normal(size=n) * 3, np.nan)
  ctr_target = rng.uniform(size=n)
  bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
  with enable_x64(True):
    box_levels = tuple(jnp.asarray(pred[a:b].reshape(*s, 4))
                       for a, b, s in zip(bounds[:-1], bounds[1:], shapes, strict=True))
    ctr_levels = tuple(jnp.asarray(ctr_logit[a:b].reshape(*s, 1))
                       for a, b, s in zip(bounds[:-1], bounds[1:], shapes, strict=True))
    rest = (jnp.asarray(target), jnp.asarray(ctr_target), jnp.asarray(positive))
    cotangent = (jnp.asarray(0.7), jnp.asarray(-1.3))
    out = {}
    for name, fn in (("fused", fcos_kernels.box_ctr_sums), ("plain", _box_ctr_plain)):
      value, vjp = jax.vjp(lambda b, c, fn=fn: fn(b, c, *rest), box_levels, ctr_levels)
      out[name] = (value, vjp(cotangent))
  assert_finite(out["fused"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
               out["fused"], out["plain"])
  assert out["fused"][1][0][0].dtype == jnp.float64


def test_jnp_functions_are_traced_inline():
  # compile time: fcos_loss traces jnp's own small jits inline (tracing.inlined), so the
  # value_and_grad jaxpr holds the loss's jit and its transpose (64 calls without it)
  f = load_fixture("mmdet_fcos.npz")
  jaxpr = jax.make_jaxpr(functools.partial(_value_and_grad, num_classes=3))(
      *fixture_heads(f), f["gt_boxes_main"], f["gt_labels_main"], f["gt_mask_main"])

  def calls(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      n += eqn.primitive.name in ("jit", "pjit")
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", param)
        if hasattr(inner, "eqns"):
          n += calls(inner)
    return n

  assert calls(jaxpr.jaxpr) <= 2


def test_padding_never_changes_outputs_or_gradients():
  f = load_fixture("mmdet_fcos.npz")
  boxes, labels, mask = f["gt_boxes"].copy(), f["gt_labels"].copy(), f["gt_mask"]
  out, grads = mmdet_loss(f, "giou_cs", boxes, labels, mask)
  before = TRACES.count
  garbage = {"nan": np.nan, "inf": np.inf, "huge": 1e30, "negative": -5.0}
  for value in garbage.values():
    noisy_boxes, noisy_labels = boxes.copy(), labels.copy()
    noisy_boxes[~mask] = value
    noisy_labels[~mask] = 2
    out2, grads2 = mmdet_loss(f, "giou_cs", noisy_boxes, noisy_labels, mask)
    jax.tree.map(np.testing.assert_array_equal, (out, grads), (out2, grads2))
  # real boxes in other slots, padding first: same result
  perm = np.array([3, 0, 1, 2])
  moved = mmdet_loss(f, "giou_cs", np.where(mask[:, perm, None], boxes[:, perm], np.nan),
                     labels[:, perm], mask[:, perm])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               (out, grads), moved)
  assert TRACES.count == before  # nor retraces: padding is data, not shape


def test_number_of_real_boxes_does_not_retrace():
  f = load_fixture("mmdet_fcos.npz")
  heads = fixture_heads(f)
  mmdet_loss(f, "giou_cs")
  before = TRACES.count
  for k in range(5):
    mask = np.arange(4)[None] < np.array([[k], [4 - k]])
    out, grads = loss_and_grad(*heads, f["gt_boxes"], f["gt_labels"], mask, num_classes=3,
                               center_sampling=True, norm_on_bbox=True, box_loss="giou")
    assert_finite((out, grads))
  assert TRACES.count == before


def test_no_ground_truth_slots_is_all_background():
  # M = 0 (nothing to pad) is M = 1 with the one box masked out
  f = load_fixture("mmdet_fcos.npz")
  heads = fixture_heads(f)
  kw = dict(num_classes=3, center_sampling=True, norm_on_bbox=True, box_loss="giou")
  empty = loss_and_grad(*heads, np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32),
                        np.zeros((2, 0), bool), **kw)
  masked = loss_and_grad(*heads, np.full((2, 1, 4), np.nan, np.float32),
                         np.zeros((2, 1), np.int32), np.zeros((2, 1), bool), **kw)
  jax.tree.map(np.testing.assert_array_equal, empty, masked)
  assert empty[0]["reg_loss"] == 0 and empty[0]["num_pos"] == 1


def test_hostile_ground_truth_and_logits_are_finite():
  f = load_fixture("mmdet_fcos.npz")
  boxes = np.array([[[10, 10, 10.5, 10.4],     # < 1 px, no point strictly inside
                     [11.8, 11.8, 12.3, 12.2],  # < 1 px around the point (12, 12)
                     [-50, -50, -10, -10],      # outside the image
                     [100, 90, 400, 300]],      # mostly outside
                    [[60, 60, 60, 60],          # zero area
                     [70, 80, 30, 20],          # inverted
                     [-1e4, -1e4, 1e4, 1e4],    # enormous
                     [0, 0, 128, 128]]], np.float32)
  mask = np.ones((2, 4), bool)
  cls, box, ctr = fixture_heads(f)
  cls = [np.where(np.arange(x.size).reshape(x.shape) % 2, 1e4, -1e4).astype(np.float32)
         for x in cls]
  out, grads = loss_and_grad(cls, box, ctr, boxes, f["gt_labels"], mask, num_classes=3,
                             center_sampling=True, norm_on_bbox=True, box_loss="giou")
  assert_finite((out, grads))
  pts = fcos.fcos_points([tuple(s) for s in f["level_sizes"]], STRIDES)
  labels, _, _ = jit_targets(pts, boxes, f["gt_labels"], mask, num_classes=3,
                             center_sampling=True, norm_on_bbox=True)
  assert labels[0, 1 * 16 + 1] == f["gt_labels"][0, 1]  # point (12, 12): the sub-pixel box


def _batch_of_four(f):
  """The fixture's two images, then the same two with the `empty1` ground truth."""
  heads = [[np.concatenate([x, x]) for x in levels] for levels in fixture_heads(f)]
  gt = [np.concatenate([f[f"{k}_main"], f[f"{k}_empty1"]])
        for k in ("gt_boxes", "gt_labels", "gt_mask")]
  return heads, gt


def _whole_batch_reference(f):
  """mmdet's loss of the four images at once, from its numbers for each pair: the
  sums behind each normalised loss add up, and so do the normalisers."""
  configs = ("giou_cs", "giou_cs_empty1")
  pos = [f[f"{c}__num_pos_raw"] for c in configs]
  den = [f[f"{c}__centerness_denorm"] for c in configs]

  def pooled(key, norm):
    return sum(f[f"{c}__{key}"] * n for c, n in zip(configs, norm, strict=True)) / sum(norm)

  return {"cls_loss": pooled("loss_cls", pos), "reg_loss": pooled("loss_bbox", den),
          "centerness_loss": pooled("loss_centerness", pos)}


def test_shard_map_with_axis_name_equals_whole_batch():
  f = load_fixture("mmdet_fcos.npz")
  (cls, box, ctr), gt = _batch_of_four(f)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("batch",))
  spec = jax.sharding.PartitionSpec("batch")

  def per_device(cls, box, ctr, boxes, labels, mask):
    out, grads = _value_and_grad(cls, box, ctr, boxes, labels, mask, num_classes=3,
                                 axis_name="batch")
    # data parallel: the loss is the pmean of per-device losses, so is each gradient
    out = jax.tree.map(lambda v: jax.lax.pmean(v, "batch"), out)
    return out, jax.tree.map(lambda g: g / 4, grads)

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec,
                                  out_specs=(jax.sharding.PartitionSpec(), spec)))
  out, grads = sharded(cls, box, ctr, *gt)
  # plain jit over batch-sharded inputs (GSPMD): the whole batch as one
  put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
  heads, placed_gt = jax.tree.map(put, ((cls, box, ctr), gt))
  whole, whole_grads = jax.jit(functools.partial(_value_and_grad, num_classes=3))(
      *heads, *placed_gt)
  for key, value in _whole_batch_reference(f).items():
    np.testing.assert_allclose(whole[key], value, rtol=2e-6, err_msg=key)
    np.testing.assert_allclose(out[key], value, rtol=2e-6, err_msg=key)
  assert whole["num_pos"] == 43 + 31 and out["num_pos"] == (43 + 31) / 4  # mean per device
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9),
               grads, whole_grads)


def test_low_precision_inputs_under_vmap():
  f = load_fixture("mmdet_fcos.npz")
  # bfloat16 heads, vmapped over a leading "model replica" axis
  heads = jax.tree.map(lambda x: jnp.asarray(np.stack([x, x]), jnp.bfloat16), fixture_heads(f))
  out = jax.jit(jax.vmap(lambda c, b, z: fcos.fcos_loss(
      c, b, z, f["gt_boxes"], f["gt_labels"], f["gt_mask"], num_classes=3)))(*heads)
  assert out["loss"].dtype == jnp.float32
  np.testing.assert_allclose(out["loss"], [f["giou_cs__loss_total"]] * 2, rtol=2e-2)


def test_centerness_loss():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(2, 6, 1)).astype(np.float32) * 3
  targets = rng.uniform(size=(2, 6)).astype(np.float32)
  x = logits[..., 0].astype(np.float64)
  expected = np.logaddexp(0, x) - targets * x
  np.testing.assert_allclose(fcos.centerness_loss(logits, targets, reduction="none"), expected,
                             rtol=1e-5)
  where = targets > 0.4
  np.testing.assert_allclose(fcos.centerness_loss(logits[..., 0], targets, where=where,
                                                  avg_factor=3.0),
                             expected[where].sum() / 3, rtol=1e-5)
  with pytest.raises(ValueError, match="one shape"):
    fcos.centerness_loss(logits[:, :3], targets)


def test_loss_errors():
  f = load_fixture("mmdet_fcos.npz")
  cls, box, ctr = fixture_heads(f)
  gt = (f["gt_boxes"], f["gt_labels"], f["gt_mask"])
  with pytest.raises(ValueError, match="num_classes"):
    fcos.fcos_loss(cls, box, ctr, *gt, num_classes=4)
  with pytest.raises(ValueError, match="box_loss"):
    fcos.fcos_loss(cls, box, ctr, *gt, num_classes=3, box_loss="l1")
  with pytest.raises(ValueError, match="one per stride"):
    fcos.fcos_loss(cls[:4], box[:4], ctr[:4], *gt, num_classes=3)
  with pytest.raises(ValueError, match="H, W"):
    fcos.fcos_loss(cls, box[::-1], ctr, *gt, num_classes=3)
  with pytest.raises(ValueError, match="gamma"):
    fcos.fcos_loss(cls, box, ctr, *gt, num_classes=3, focal_gamma=-1.0)
