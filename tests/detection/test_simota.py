"""simota_assign: mmdetection 3.3.0 SimOTAAssigner assignments
(tests/fixtures/mmdet/mmdet_simota.npz), hand cases, padding invariance, retracing, hostile
inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

ASSIGN = jax.jit(jaxloss.simota_assign, static_argnames=(
    "center_radius", "candidate_topk", "iou_weight", "cls_weight"))
CONFIGS = {"simota": {},
           "simota_r15": dict(center_radius=1.5, candidate_topk=5, iou_weight=2.0,
                              cls_weight=0.5)}


def fixture():
  f = load_fixture("mmdet_simota.npz")
  return f, (f["pred_scores"], f["pred_boxes"], f["priors"]), (f["gt_boxes"], f["gt_labels"],
                                                                f["gt_mask"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_mmdet(name):
  f, pred, gt = fixture()
  out = ASSIGN(*pred, *gt, **CONFIGS[name])
  index = f[f"{name}__gt_index"]
  positive = index >= 0
  assert positive.sum() >= 9
  np.testing.assert_array_equal(out.gt_index, index)
  np.testing.assert_array_equal(out.positive, positive)
  np.testing.assert_array_equal(out.labels, np.where(positive, f[f"{name}__labels"], 3))
  np.testing.assert_allclose(out.ious, f[f"{name}__ious"], rtol=1e-6, atol=1e-7)
  boxes = np.take_along_axis(f["gt_boxes"], np.maximum(index, 0)[..., None], axis=1)
  np.testing.assert_array_equal(out.boxes, np.where(positive[..., None], boxes, 0))


def test_fixture_exercises_conflicts_and_a_box_without_priors_inside():
  f, _, _ = fixture()
  # dynamic k of image 0 is 5 + 4 + 3 = 12; one prior was wanted by boxes 0 and 1
  assert (f["simota__gt_index"][0] >= 0).sum() == 11
  # image 1's box 1 (4 px) holds no prior: it gets one from its centre square
  assert (f["simota__gt_index"][1] == 1).sum() == 1


# ---------------------------------------------------------------- hand cases

GRID = (0.0, 8.0, 16.0, 24.0)
PRIORS = np.array([[x, y, 8.0, 8.0] for y in GRID for x in GRID],
                  np.float32)  # a 4x4 grid of stride 8: prior index = 4 * row + column


def hand(pred_boxes, gt_boxes, gt_labels, gt_mask, scores=None, **kw):
  pred_boxes = np.broadcast_to(np.asarray(pred_boxes, np.float32), (1, 16, 4))
  if scores is None:
    scores = np.full((1, 16, 2), 0.5, np.float32)
  return ASSIGN(scores, pred_boxes, PRIORS, np.asarray(gt_boxes, np.float32)[None],
                np.asarray(gt_labels, np.int32)[None], np.asarray(gt_mask)[None], **kw)


def test_dynamic_k_is_the_floor_of_the_summed_top_ious():
  # every predicted box is the ground truth box (IoU 1): k = min(candidate_topk, valid)
  # priors; the cheapest are those inside box and centre square, lowest index first
  out = hand([[4, 4, 20, 20]], [[4, 4, 20, 20], [0, 0, 0, 0]], [1, 0], [True, False],
             candidate_topk=3)
  np.testing.assert_array_equal(np.flatnonzero(out.positive[0]), [5, 6, 9])
  np.testing.assert_array_equal(out.labels[0, [5, 6, 9, 10]], [1, 1, 1, 2])
  np.testing.assert_allclose(out.ious[0, [5, 6, 9]], 1.0)
  # IoUs 0.75 each: k = floor(3 * 0.75) = 2
  out = hand([[4, 4, 20, 16]], [[4, 4, 20, 20], [0, 0, 0, 0]], [1, 0], [True, False],
             candidate_topk=3)
  np.testing.assert_array_equal(np.flatnonzero(out.positive[0]), [5, 6])


def test_a_prior_wanted_by_two_boxes_keeps_the_cheaper():
  pred = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (16, 1))
  pred[5] = [6, 6, 18, 20]  # prior 5 (8, 8) lies in both boxes; its box is box 1
  out = hand(pred, [[2, 2, 26, 26], [6, 6, 18, 20]], [0, 0], [True, True], candidate_topk=1)
  assert out.gt_index[0, 5] == 1
  # box 0 (k = 1) wanted prior 5 too and, as in mmdetection, is not matched again
  assert out.positive[0].sum() == 1


@pytest.mark.parametrize("slots", [0, 3])
def test_image_without_boxes_is_all_background(slots):
  out = hand([[0, 0, 8, 8]], np.full((slots, 4), np.nan, np.float32), np.zeros(slots, np.int32),
             np.zeros(slots, bool))
  assert not out.positive.any()
  np.testing.assert_array_equal(out.labels, 2)
  np.testing.assert_array_equal(out.gt_index, -1)
  np.testing.assert_array_equal(out.ious, 0)


# ---------------------------------------------------------------- padding, tracing

def test_padding_never_changes_an_output():
  _, pred, (boxes, labels, mask) = fixture()
  ref = ASSIGN(*pred, boxes, labels, mask)
  for value in (np.nan, np.inf, -1e30, 40.0):
    noisy = boxes.copy()
    noisy[~mask] = value
    out = ASSIGN(*pred, noisy, np.where(mask, labels, 99), mask)
    jax.tree.map(np.testing.assert_array_equal, ref, out)
  perm = np.array([3, 2, 1, 0])
  moved = ASSIGN(*pred, np.where(mask[:, perm, None], boxes[:, perm], np.nan), labels[:, perm],
                 mask[:, perm])
  for key in ("labels", "boxes", "positive", "ious"):
    np.testing.assert_array_equal(getattr(moved, key), getattr(ref, key), err_msg=key)
  np.testing.assert_array_equal(moved.gt_index, np.where(ref.positive, perm[ref.gt_index], -1))


def test_one_compilation_for_any_number_of_real_boxes():
  _, pred, (boxes, labels, _) = fixture()
  fn, counter = jit_counting(jaxloss.simota_assign)
  for k in range(5):
    mask = np.arange(4)[None] < np.array([[k], [4 - k]])
    assert_finite(fn(*pred, boxes, labels, mask).ious)
  assert counter.count == 1


def test_label_dtypes_low_precision_and_hostile_inputs():
  _, (scores, pred, priors), (boxes, labels, mask) = fixture()
  ref = ASSIGN(scores, pred, priors, boxes, labels, mask)
  out = ASSIGN(scores, pred, priors, boxes, labels.astype(np.uint8), mask)
  jax.tree.map(np.testing.assert_array_equal, ref, out)
  low = ASSIGN(jnp.asarray(scores, jnp.bfloat16), pred, priors, boxes, labels, mask)
  assert low.ious.dtype == jnp.float32
  scores = scores.copy()
  scores[0, :20] = 0.0
  scores[1, :20] = 1.0
  pred = pred.copy()
  pred[0, :30] = [30, 30, 30, 30]
  pred[1, :30] = [40, 40, 10, 10]
  hostile = np.array([[[10, 10, 10, 30], [50, 50, 20, 20], [0, 0, 1e-3, 1e-3], [1, 1, 2, 2]],
                      [[-50, -50, 500, 500], [30, 30, 30, 30], [0, 0, 0, 0], [5, 5, 60, 9]]],
                     np.float32)
  with jax.debug_nans(True):
    out = jaxloss.simota_assign(scores, pred, priors, hostile, labels, np.ones((2, 4), bool))
  assert_finite(out)
  assert out.positive.any()


def test_errors_name_the_argument():
  _, (scores, pred, priors), gt = fixture()
  with pytest.raises(ValueError, match="priors must be"):
    jaxloss.simota_assign(scores, pred, priors[:, :2], *gt)
  with pytest.raises(ValueError, match="pred_boxes must be"):
    jaxloss.simota_assign(scores, pred[:, :5], priors, *gt)
  with pytest.raises(ValueError, match="candidate_topk"):
    jaxloss.simota_assign(scores, pred, priors, *gt, candidate_topk=0)
  with pytest.raises(TypeError, match="gt_mask. must be boolean"):
    jaxloss.simota_assign(scores, pred, priors, gt[0], gt[1], gt[2].astype(np.int8))
