"""max_iou_assign and atss_assign: mmdetection 3.3 MaxIoUAssigner / ATSSAssigner numbers
(tests/fixtures/mmdet/mmdet_anchor.npz), hand cases (low-quality matches, ignored anchors,
ATSS ties), NaN-padding invariance, one trace for any number of real boxes, label dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import jit_counting, load_fixture

GT_SETS = ("main", "empty1", "allempty")
MAX_IOU = {
    "retina": dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0),
    "interval": dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4), min_pos_iou=0.3,
                     gt_max_assign_all=False),
    "nolq": dict(pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.0, match_low_quality=False),
}


@pytest.fixture(scope="module")
def fx():
  return load_fixture("mmdet_anchor.npz")


def gt(fx, name):
  return fx[f"gt_boxes_{name}"], fx[f"gt_labels_{name}"], fx[f"gt_mask_{name}"]


def check_against_mmdet(out, gt_inds, labels):
  """mmdet gt_inds: 0 negative, -1 ignored, k > 0 box k - 1."""
  np.testing.assert_array_equal(out.gt_index, np.where(gt_inds > 0, gt_inds - 1, -1))
  np.testing.assert_array_equal(out.positive, gt_inds > 0)
  want = np.where(gt_inds > 0, np.take_along_axis(labels, np.maximum(gt_inds - 1, 0), 1), 3)
  np.testing.assert_array_equal(out.labels, want)


@pytest.mark.parametrize("cfg", list(MAX_IOU))
@pytest.mark.parametrize("gt_set", GT_SETS)
def test_max_iou_matches_mmdet(fx, cfg, gt_set):
  boxes, labels, mask = gt(fx, gt_set)
  out = jaxloss.max_iou_assign(fx["anchors_retina"], boxes, labels, mask, num_classes=3,
                               **MAX_IOU[cfg])
  gt_inds = fx[f"maxiou_{cfg}_{gt_set}__gt_inds"]
  check_against_mmdet(out, gt_inds, labels)
  np.testing.assert_array_equal(out.ignored, gt_inds == -1)
  np.testing.assert_allclose(out.max_overlaps, fx[f"maxiou_{cfg}_{gt_set}__max_overlaps"],
                             atol=1e-6)
  pos = np.asarray(out.positive)
  np.testing.assert_array_equal(np.asarray(out.boxes)[pos],
                                boxes[np.nonzero(pos)[0], np.asarray(out.gt_index)[pos]])
  assert not np.asarray(out.boxes)[~pos].any()
  if gt_set == "main":
    assert pos.sum() > 10 and np.asarray(out.ignored).sum() > 10  # the case is not trivial


@pytest.mark.parametrize("name,sizes", [("gfl", "gfl"), ("retina", "retina")])
@pytest.mark.parametrize("gt_set", GT_SETS)
def test_atss_matches_mmdet(fx, name, sizes, gt_set):
  boxes, labels, mask = gt(fx, gt_set)
  out = jaxloss.atss_assign(fx[f"anchors_{name}"], fx[f"num_level_anchors_{sizes}"], boxes,
                            labels, mask, num_classes=3)
  check_against_mmdet(out, fx[f"atss_{name}_{gt_set}__gt_inds"], labels)
  ious = np.asarray(jaxloss.pairwise_box_iou(boxes, fx[f"anchors_{name}"]))  # [B, M, A]
  pos = np.asarray(out.positive)
  want = np.take_along_axis(ious, np.maximum(np.asarray(out.gt_index), 0)[:, None], 1)[:, 0]
  np.testing.assert_allclose(out.ious, np.where(pos, want, 0), atol=1e-6)
  if gt_set == "main":
    assert pos.sum() > 10


def test_max_iou_hand_cases():
  anchors = jnp.array([[0.0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 30, 30], [100, 100, 110, 110],
                       [0, 0, 20, 20]])
  # box 0 == anchor 0 (IoU 1; anchor 1 IoU 0.8); box 1 overlaps anchor 2 by 1/7 (low
  # quality); anchor 4 has IoU 0.25 with box 0: between 0.2 and 0.5, ignored
  boxes = jnp.array([[[0.0, 0, 10, 10], [25, 20, 35, 30], [0, 0, 0, 0]]])
  labels, mask = jnp.array([[4, 7, 0]]), jnp.array([[True, True, False]])
  out = jaxloss.max_iou_assign(anchors, boxes, labels, mask, num_classes=9, pos_iou_thr=0.5,
                               neg_iou_thr=0.2)
  np.testing.assert_array_equal(out.gt_index[0], [0, 0, 1, -1, -1])
  np.testing.assert_array_equal(out.labels[0], [4, 4, 7, 9, 9])
  np.testing.assert_array_equal(out.ignored[0], [False, False, False, False, True])
  np.testing.assert_allclose(out.max_overlaps[0], [1, 0.8, 1 / 3, 0, 0.25], rtol=1e-6)
  off = jaxloss.max_iou_assign(anchors, boxes, labels, mask, num_classes=9, pos_iou_thr=0.5,
                               neg_iou_thr=0.2, match_low_quality=False)
  np.testing.assert_array_equal(off.gt_index[0], [0, 0, -1, -1, -1])
  np.testing.assert_array_equal(off.ignored[0], [False, False, True, False, True])


def test_max_iou_low_quality_ties_and_last_box_wins():
  anchors = jnp.array([[0.0, 0, 10, 10], [10, 0, 20, 10], [40, 40, 50, 50]])
  # box 0 straddles anchors 0 and 1 equally (IoU 1/3 each); box 1 has the same best anchors
  boxes = jnp.array([[[5.0, 0, 15, 10], [5.0, 0, 15, 10]]])
  out = jaxloss.max_iou_assign(anchors, boxes, jnp.array([[1, 2]]), jnp.array([[True, True]]),
                               num_classes=3)
  np.testing.assert_array_equal(out.gt_index[0], [1, 1, -1])  # all tied anchors, last box
  first = jaxloss.max_iou_assign(anchors, boxes[:, :1], jnp.array([[1]]), jnp.array([[True]]),
                                 num_classes=3, gt_max_assign_all=False)
  np.testing.assert_array_equal(first.gt_index[0], [0, -1, -1])


def test_atss_overlapping_candidates_take_the_highest_iou():
  anchors = jaxloss.anchor_grid([(4, 4)], (8,), octave_base_scale=2, scales_per_octave=1,
                                ratios=(1.0,), center_offset=0.5)
  # two boxes around the same centre; anchors nearest both go to the one of higher IoU
  boxes = jnp.array([[[1.0, 1, 23, 23], [5, 5, 19, 19]]])
  out = jaxloss.atss_assign(anchors, [16], boxes, jnp.array([[0, 1]]),
                            jnp.array([[True, True]]), num_classes=2, topk=4)
  ious = np.asarray(jaxloss.pairwise_box_iou(boxes[0], anchors))
  pos = np.asarray(out.positive[0])
  assert pos.any()
  np.testing.assert_array_equal(np.asarray(out.gt_index[0])[pos], ious.argmax(0)[pos])


def test_atss_threshold_is_mean_plus_unbiased_std():
  # one level, topk 5: IoUs u = (1, 0.9, 0.1, 0.1, 0.1) with the box; only anchors 0 and 1
  # have their centre inside it. mean + std(ddof=1) = 0.907 keeps anchor 0 only; the
  # biased std would give 0.858 and take anchor 1 too.
  s, t = 10 / 19, 90 / 11
  anchors = jnp.array([[0.0, 0, 10, 10], [s, 0, 10 + s, 10], [t, 0, 10 + t, 10],
                       [-t, 0, 10 - t, 10], [0, t, 10, 10 + t]])
  box = jnp.array([[[0.0, 0, 10, 10]]])
  u = np.asarray(jaxloss.pairwise_box_iou(box[0], anchors), np.float64)[0]
  np.testing.assert_allclose(u, [1, 0.9, 0.1, 0.1, 0.1], rtol=1e-5)
  assert u.mean() + u.std(ddof=0) < u[1] < u.mean() + u.std(ddof=1)
  out = jaxloss.atss_assign(anchors, [5], box, jnp.array([[0]]), jnp.array([[True]]),
                            num_classes=1, topk=5)
  np.testing.assert_array_equal(out.positive[0], [True, False, False, False, False])


def _nan_padded(boxes, labels, mask, extra=3):
  b, m = mask.shape
  boxes = np.concatenate([boxes, np.zeros((b, extra, 4), boxes.dtype)], 1)
  labels = np.concatenate([labels, np.full((b, extra), 77, labels.dtype)], 1)
  mask = np.concatenate([mask, np.zeros((b, extra), bool)], 1)
  return np.where(mask[..., None], boxes, np.nan).astype(np.float32), labels, mask


@pytest.mark.parametrize("assign", ["max_iou", "atss"])
def test_nan_padding_never_changes_an_output(fx, assign):
  boxes, labels, mask = gt(fx, "empty1")
  if assign == "max_iou":
    run = lambda *g: jaxloss.max_iou_assign(fx["anchors_retina"], *g, num_classes=3)
  else:
    run = lambda *g: jaxloss.atss_assign(fx["anchors_gfl"], fx["num_level_anchors_gfl"], *g,
                                         num_classes=3)
  want = run(boxes, labels, mask)
  with jax.debug_nans(True):
    got = run(*_nan_padded(boxes, labels, mask))
  for w, g in zip(want, got, strict=True):
    np.testing.assert_array_equal(w, g)
  narrow = run(boxes, labels.astype(np.uint8), mask)  # any integer dtype, same classes
  np.testing.assert_array_equal(narrow.labels, want.labels)


def test_one_trace_for_any_number_of_real_boxes(fx):
  boxes, labels, _ = gt(fx, "main")
  anchors, sizes = fx["anchors_gfl"], tuple(int(n) for n in fx["num_level_anchors_gfl"])

  def both(b, lab, m):
    return (jaxloss.max_iou_assign(anchors, b, lab, m, num_classes=3).gt_index,
            jaxloss.atss_assign(anchors, sizes, b, lab, m, num_classes=3).gt_index)

  fn, counter = jit_counting(both)
  for n in range(6):
    mask = np.arange(5)[None, :] < np.array([[n], [max(n - 2, 0)]])
    fn(boxes, labels, mask)
  assert counter.count == 1


def test_assigner_errors(fx):
  boxes, labels, mask = gt(fx, "main")
  anchors = fx["anchors_gfl"]
  with pytest.raises(TypeError, match="gt_mask. must be boolean"):
    jaxloss.max_iou_assign(anchors, boxes, labels, mask.astype(int), num_classes=3)
  with pytest.raises(TypeError, match="gt_labels"):
    jaxloss.max_iou_assign(anchors, boxes, labels.astype(float), mask, num_classes=3)
  with pytest.raises(ValueError, match=r"gt_boxes must be \[B, M, 4\]"):
    jaxloss.max_iou_assign(anchors, boxes[0], labels, mask, num_classes=3)
  with pytest.raises(ValueError, match=r"anchors must be \[A, 4\]"):
    jaxloss.max_iou_assign(anchors[None], boxes, labels, mask, num_classes=3)
  with pytest.raises(ValueError, match="neg_iou_thr"):
    jaxloss.max_iou_assign(anchors, boxes, labels, mask, num_classes=3, neg_iou_thr=(0.1,))
  with pytest.raises(ValueError, match="num_level_anchors"):
    jaxloss.atss_assign(anchors, [300], boxes, labels, mask, num_classes=3)


def test_strict_dtype_and_rank_promotion(fx):
  boxes, labels, mask = gt(fx, "main")
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    anchors = jaxloss.anchor_grid([(4, 4), (2, 2)], (8, 16))
    deltas = jaxloss.delta_xywh_encode(anchors, jnp.broadcast_to(boxes[:1, :1], (1, 180, 4)),
                                       means=(0.1, 0, 0, 0))
    jaxloss.delta_xywh_decode(anchors, deltas, add_ctr_clamp=True, max_shape=(32, 32))
    jaxloss.max_iou_assign(fx["anchors_gfl"], boxes, labels, mask, num_classes=3)
    jaxloss.atss_assign(fx["anchors_gfl"], fx["num_level_anchors_gfl"], boxes, labels, mask,
                        num_classes=3)


def test_max_iou_zero_threshold_never_picks_a_padded_slot():
  # pos_iou_thr=0: every anchor is positive, also at IoU 0, where a padded slot ties
  anchors = jnp.array([[0.0, 0, 10, 10], [50, 50, 60, 60]])
  boxes = jnp.array([[[np.nan] * 4, [0.0, 0, 10, 10]]])
  out = jaxloss.max_iou_assign(anchors, boxes, jnp.array([[0, 1]]), jnp.array([[False, True]]),
                               num_classes=2, pos_iou_thr=0.0, match_low_quality=False)
  np.testing.assert_array_equal(out.gt_index[0], [1, 1])
