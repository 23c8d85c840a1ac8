"""FCOS points, target assignment and loss: hand cases, a numpy reference,
mmdetection 3.3 reference numbers (tests/fixtures/mmdet_fcos.npz), padding
invariance, retracing, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import fcos
from tests.utils import assert_finite, jit_counting, load_fixture

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

TARGET_STATICS = ("num_classes", "center_sampling", "norm_on_bbox", "level_chunks")
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
  # level_chunks (one level at a time) must give the same result
  lab, ltrb, ctr = hand_targets(boxes, labels, mask, center_sampling,
                                level_chunks=center_sampling)
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
