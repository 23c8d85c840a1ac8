"""Box geometry against torchvision's numbers and numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss.boxes import geometry as jboxes
from tests.utils import assert_finite, load_fixture

TV = load_fixture("torchvision_boxes.npz")
RNG = np.random.default_rng(7)


def np_area(b):
  return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def np_inter(a, b):
  w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
  h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
  return np.clip(w, 0, None) * np.clip(h, 0, None)


def np_iou_giou(a, b):
  """IoU and GIoU (Rezatofighi et al. 2019, Algorithm 1)."""
  inter = np_inter(a, b)
  union = np_area(a) + np_area(b) - inter
  cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
  ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
  iou = inter / union
  return iou, iou - (cw * ch - union) / (cw * ch)


def random_boxes(n, rng=RNG):
  xy = rng.uniform(0, 50, (n, 2))
  wh = rng.uniform(1, 30, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_box_convert_matches_torchvision():
  pred = TV["pred"]
  np.testing.assert_allclose(jaxloss.box_convert(pred, "xyxy", "cxcywh"), TV["pred_cxcywh"],
                             rtol=1e-6, atol=1e-3)
  np.testing.assert_allclose(jaxloss.box_convert(pred, "xyxy", "xywh"), TV["pred_xywh"],
                             rtol=1e-6, atol=1e-3)
  np.testing.assert_allclose(jaxloss.box_convert(TV["pred_cxcywh"], "cxcywh", "xywh"),
                             TV["pred_xywh"], rtol=1e-5)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_convert_round_trip(fmt):
  b = random_boxes(6)
  there = jaxloss.box_convert(b, "xyxy", fmt)
  np.testing.assert_allclose(jaxloss.box_convert(there, fmt, "xyxy"), b, rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(jaxloss.box_convert(b, fmt, fmt), b)


def test_box_convert_errors():
  with pytest.raises(ValueError, match="distance_to_box"):
    jaxloss.box_convert(random_boxes(2), "ltrb", "xyxy")
  with pytest.raises(ValueError, match=r"\('xyxy', 'xywh', 'cxcywh'\)"):
    jaxloss.box_convert(random_boxes(2), "xyxy", "yxyx")
  with pytest.raises(ValueError, match="size 4"):
    jaxloss.box_convert(np.zeros((3, 5)), "xyxy", "xywh")


def test_box_area_matches_torchvision_and_inverted_is_zero():
  np.testing.assert_allclose(jaxloss.box_area(TV["pred"]), TV["box_area"], rtol=1e-5)
  inverted = np.array([[5., 0., 0., 5.], [0., 5., 5., 0.], [3., 3., 3., 9.]], np.float32)
  np.testing.assert_array_equal(jaxloss.box_area(inverted), 0.0)
  grads = jax.grad(lambda b: jaxloss.box_area(b).sum())(inverted)
  np.testing.assert_array_equal(grads, 0.0)


def test_pairwise_match_torchvision():
  a, b = TV["pair_a"].astype(np.float32), TV["pair_b"].astype(np.float32)
  np.testing.assert_allclose(jaxloss.pairwise_box_iou(a, b), TV["pairwise_iou"], rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(jaxloss.pairwise_generalized_box_iou(a, b), TV["pairwise_giou"],
                             rtol=1e-5, atol=1e-7)
  assert jaxloss.pairwise_box_iou(a, b).shape == (7, 5)


def test_pairwise_batched_by_vmap_and_broadcast():
  a = np.stack([random_boxes(3), random_boxes(3)])
  b = np.stack([random_boxes(4), random_boxes(4)])
  by_vmap = jax.jit(jax.vmap(jaxloss.pairwise_box_iou))(a, b)
  np.testing.assert_allclose(jaxloss.pairwise_box_iou(a, b), by_vmap, rtol=1e-6)
  iou, giou = np_iou_giou(a[:, :, None].astype(np.float64), b[:, None].astype(np.float64))
  np.testing.assert_allclose(by_vmap, iou, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.jit(jax.vmap(jaxloss.pairwise_generalized_box_iou))(a, b), giou,
                             rtol=1e-5, atol=1e-6)


def test_aligned_iou_and_giou_against_paper_formula():
  p, t = TV["pred"], TV["target"]
  iou, giou = np_iou_giou(p, t)
  np.testing.assert_allclose(jaxloss.box_iou(p.astype(np.float32), t.astype(np.float32)), iou,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jaxloss.generalized_box_iou(p, t), giou, rtol=1e-5, atol=1e-6)
  eps_iou = jaxloss.box_iou(p, t, eps=1.0)
  np.testing.assert_allclose(eps_iou, np_inter(p, t) / (np_area(p) + np_area(t)
                                                        - np_inter(p, t) + 1.0), rtol=1e-5)


def test_degenerate_pairs_are_finite():
  zero = np.array([[3., 3., 3., 3.], [0., 0., 0., 0.], [5., 0., 0., 5.]], np.float32)
  a = np.concatenate([zero, TV["pair_a"][:4]]).astype(np.float32)  # fixture shapes: no recompile
  b = np.concatenate([zero, TV["pair_b"][:2]]).astype(np.float32)
  both = lambda a, b: (jaxloss.pairwise_box_iou(a, b).sum()
                       + jaxloss.pairwise_generalized_box_iou(a, b).sum())
  assert_finite(jax.jit(jax.value_and_grad(both, argnums=(0, 1)))(a, b))
  np.testing.assert_array_equal(jaxloss.pairwise_box_iou(zero, zero), 0.0)
  np.testing.assert_array_equal(jaxloss.generalized_box_iou(zero, zero), 0.0)


def test_distance_box_round_trip():
  points = RNG.uniform(0, 50, (2, 5, 2)).astype(np.float32)
  ltrb = RNG.uniform(0, 10, (2, 5, 4)).astype(np.float32)
  boxes = jaxloss.distance_to_box(points, ltrb)
  x, y = points[..., 0], points[..., 1]
  expected = np.stack([x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]],
                      -1)
  np.testing.assert_allclose(boxes, expected, rtol=1e-6)
  np.testing.assert_allclose(jaxloss.box_to_distance(points, boxes), ltrb, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jaxloss.box_area(boxes),
                             (ltrb[..., 0] + ltrb[..., 2]) * (ltrb[..., 1] + ltrb[..., 3]),
                             rtol=1e-5)


def test_ltrb_decodes_around_origin_and_jit():
  ltrb = np.array([1., 2., 3., 4.], np.float32)
  np.testing.assert_array_equal(jboxes.to_xyxy(ltrb, "ltrb"), [-1., -2., 3., 4.])
  iou = jax.jit(jaxloss.box_iou)(random_boxes(4), random_boxes(4))
  assert iou.shape == (4,) and iou.dtype == jnp.float32
  assert jaxloss.box_area(jnp.ones((2, 4), jnp.bfloat16)).dtype == jnp.float32


def _np_pairwise_iou(a, b):
  """float64 IoU of xyxy boxes a [N, 4] and b [M, 4] from the definition."""
  a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
  w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return w * h / (area(a) + area(b) - w * h)


def _np_from_xyxy(boxes, fmt):
  x1, y1, x2, y2 = np.moveaxis(np.asarray(boxes, np.float64), -1, 0)
  if fmt == "xywh":
    return np.stack([x1, y1, x2 - x1, y2 - y1], -1)
  return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_format_of_geometry_functions(fmt):
  rng = np.random.default_rng(7)
  xy = rng.uniform(0, 50, (2, 5, 2))
  a = np.concatenate([xy[0], xy[0] + rng.uniform(1, 30, (5, 2))], -1)
  b = np.concatenate([xy[1], xy[1] + rng.uniform(1, 30, (5, 2))], -1)
  fa, fb = (_np_from_xyxy(x, fmt).astype(np.float32) for x in (a, b))
  expected = _np_pairwise_iou(a, b)
  np.testing.assert_allclose(jaxloss.pairwise_box_iou(fa, fb, box_format=fmt), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jaxloss.box_iou(fa, fb, box_format=fmt), np.diag(expected),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      jboxes.pairwise_generalized_box_iou(fa, fb, box_format=fmt),
      jboxes.pairwise_generalized_box_iou(a.astype(np.float32), b.astype(np.float32)),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jaxloss.box_area(fa, box_format=fmt),
                             (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), rtol=1e-5)
  with pytest.raises(ValueError, match="box_format must be one of"):
    jaxloss.pairwise_box_iou(fa, fb, box_format="ltrb")


def test_negative_eps_raises():
  a = np.array([[0.0, 0.0, 2.0, 2.0]], np.float32)
  with pytest.raises(ValueError, match=r"`eps` must be in \[0, inf\)"):
    jaxloss.box_iou(a, a, eps=-1e-7)
  with pytest.raises(ValueError, match=r"`eps` must be in \[0, inf\)"):
    jaxloss.generalized_box_iou(a, a, eps=-1.0)
  for fn in (jaxloss.giou_loss, jaxloss.diou_loss, jaxloss.ciou_loss, jaxloss.eiou_loss,
             jaxloss.siou_loss):
    with pytest.raises(ValueError, match=r"`eps` must be in \[0, inf\)"):
      fn(a, a, eps=-1e-7)
  with pytest.raises(ValueError, match=r"`eps` must be in \(0, inf\)"):
    jaxloss.iou_loss(a, a, eps=0.0)
  # a traced eps is not checked, and works
  np.testing.assert_allclose(jax.jit(lambda e: jaxloss.iou_loss(a, a, eps=e))(1e-6), 0.0,
                             atol=1e-6)
