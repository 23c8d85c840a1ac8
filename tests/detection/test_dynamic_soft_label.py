"""dynamic_soft_label_assign: mmdetection 3.3.0 DynamicSoftLabelAssigner (RTMDet)
assignments (tests/fixtures/mmdet/mmdet_dsl.npz), a hand case, padding invariance, retracing,
hostile inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

ASSIGN = jax.jit(jaxloss.dynamic_soft_label_assign,
                 static_argnames=("soft_center_radius", "topk", "iou_weight"))
CONFIGS = {"dsl": {}, "dsl_r2": dict(soft_center_radius=2.0, topk=5, iou_weight=2.0)}


def fixture():
  f = load_fixture("mmdet_dsl.npz")
  return f, (f["pred_logits"], f["pred_boxes"], f["priors"]), (f["gt_boxes"], f["gt_labels"],
                                                                f["gt_mask"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_mmdet(name):
  f, pred, gt = fixture()
  out = ASSIGN(*pred, *gt, **CONFIGS[name])
  index = f[f"{name}__gt_index"]
  positive = index >= 0
  assert positive.sum() >= 6
  np.testing.assert_array_equal(out.gt_index, index)
  np.testing.assert_array_equal(out.labels, np.where(positive, f[f"{name}__labels"], 3))
  np.testing.assert_allclose(out.ious, f[f"{name}__ious"], rtol=1e-6, atol=1e-7)
  boxes = np.take_along_axis(f["gt_boxes"], np.maximum(index, 0)[..., None], axis=1)
  np.testing.assert_array_equal(out.boxes, np.where(positive[..., None], boxes, 0))
  if name == "dsl":  # dynamic k 4 + 4 + 1 in image 0; one prior was wanted by two boxes
    assert positive[0].sum() == 8


def test_soft_centre_prior_prefers_the_prior_nearest_the_centre():
  # one box, identical predictions everywhere: the cost differs only by the centre prior
  priors = np.array([[x, y, 8.0, 8.0] for y in (0.0, 8.0, 16.0, 24.0)
                     for x in (0.0, 8.0, 16.0, 24.0)], np.float32)
  logits = np.zeros((1, 16, 2), np.float32)
  boxes = np.broadcast_to(np.array([5.0, 5.0, 23.0, 23.0], np.float32), (1, 16, 4))
  out = ASSIGN(logits, boxes, priors, np.array([[[5, 5, 23, 23.0]]], np.float32),
               np.array([[1]]), np.array([[True]]), topk=1)
  # k = floor(IoU 1) = 1; of the priors inside, (16, 16) (index 10) is nearest the centre
  np.testing.assert_array_equal(np.flatnonzero(out.positive[0]), [10])
  assert out.labels[0, 10] == 1 and out.ious[0, 10] == 1


def test_padding_retracing_and_no_boxes():
  _, pred, (boxes, labels, mask) = fixture()
  ref = ASSIGN(*pred, boxes, labels, mask)
  for value in (np.nan, np.inf, -1e30):
    noisy = boxes.copy()
    noisy[~mask] = value
    jax.tree.map(np.testing.assert_array_equal, ref,
                 ASSIGN(*pred, noisy, np.where(mask, labels, 99), mask))
  fn, counter = jit_counting(jaxloss.dynamic_soft_label_assign)
  for k in range(5):
    some = np.arange(4)[None] < np.array([[k], [4 - k]])
    out = fn(*pred, boxes, labels, some)
    assert_finite(out.ious)
    if k == 0:
      assert not out.positive[0].any() and out.positive[1].any()
  assert counter.count == 1
  empty = ASSIGN(*pred, boxes[:, :0], labels[:, :0], mask[:, :0])
  assert not empty.positive.any() and (empty.labels == 3).all()


def test_hostile_inputs_and_label_dtypes():
  _, (logits, pred, priors), (boxes, labels, mask) = fixture()
  ref = ASSIGN(logits, pred, priors, boxes, labels, mask)
  jax.tree.map(np.testing.assert_array_equal, ref,
               ASSIGN(logits, pred, priors, boxes, labels.astype(np.int64), mask))
  low = ASSIGN(jnp.asarray(logits, jnp.bfloat16), pred, priors, boxes, labels, mask)
  assert low.ious.dtype == jnp.float32
  logits = np.where(np.arange(logits.size).reshape(logits.shape) % 2, 1e4, -1e4)
  pred = pred.copy()
  pred[0, :30] = [30, 30, 30, 30]
  pred[1, :30] = [40, 40, 10, 10]
  hostile = np.array([[[10, 10, 10, 30], [50, 50, 20, 20], [0, 0, 1e-3, 1e-3], [1, 1, 2, 2]],
                      [[-50, -50, 500, 500], [30, 30, 30, 30], [0, 0, 0, 0], [5, 5, 60, 9]]],
                     np.float32)
  with jax.debug_nans(True):
    out = jaxloss.dynamic_soft_label_assign(logits.astype(np.float32), pred, priors, hostile,
                                            labels, np.ones((2, 4), bool))
  assert_finite(out)
  assert out.positive.any()


def test_errors_name_the_argument():
  _, (logits, pred, priors), gt = fixture()
  with pytest.raises(ValueError, match="priors must be"):
    jaxloss.dynamic_soft_label_assign(logits, pred, priors[:10], *gt)
  with pytest.raises(ValueError, match="topk must be"):
    jaxloss.dynamic_soft_label_assign(logits, pred, priors, *gt, topk=0)
  with pytest.raises(TypeError, match="gt_labels"):
    jaxloss.dynamic_soft_label_assign(logits, pred, priors, gt[0], gt[1].astype(float), gt[2])


def test_strict_dtype_and_rank_promotion():
  f, pred, gt = fixture()
  with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
    out = jaxloss.dynamic_soft_label_assign(*pred, *gt)
  np.testing.assert_array_equal(out.gt_index, f["dsl__gt_index"])
