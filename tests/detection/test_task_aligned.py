"""task_aligned_assign: ultralytics 8.3.40 TaskAlignedAssigner numbers
(tests/fixtures/ultralytics/ultralytics_yolo.npz), a float64 numpy reference written from the
TOOD / ultralytics rules, hand cases, padding invariance, retracing, hostile inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

ASSIGN = jax.jit(jaxloss.task_aligned_assign,
                 static_argnames=("num_classes", "topk", "alpha", "beta", "eps"))


def fixture_case(name):
  f = load_fixture("ultralytics_yolo.npz")
  if name == "tal":
    args = (f["tal__pred_scores"], f["tal__pred_boxes"], f["tal__anchor_points"])
    return f, args, dict(num_classes=4, topk=8, alpha=1.0, beta=6.0)
  args = (f["v8__pred_scores"], f["v8__pred_boxes_px"], f["anchor_points"])
  return f, args, dict(num_classes=3, topk=10, alpha=0.5, beta=6.0)


def gt(f):
  return f["gt_boxes"], f["gt_labels"], f["gt_mask"]


# ---------------------------------------------------------------- numpy reference

def np_ciou(a, b, eps=1e-7):
  """ultralytics bbox_iou(CIoU=True) of one box pair, float64."""
  w1, h1 = a[2] - a[0], a[3] - a[1] + eps
  w2, h2 = b[2] - b[0], b[3] - b[1] + eps
  inter = (max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0))
  union = w1 * h1 + w2 * h2 - inter + eps
  overlap = inter / union
  cw = max(a[2], b[2]) - min(a[0], b[0])
  ch = max(a[3], b[3]) - min(a[1], b[1])
  c2 = cw**2 + ch**2 + eps
  rho2 = ((b[0] + b[2] - a[0] - a[2]) ** 2 + (b[1] + b[3] - a[1] - a[3]) ** 2) / 4
  v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
  alpha = v / (v - overlap + 1 + eps)
  return overlap - (rho2 / c2 + v * alpha)


def np_assign(scores, boxes, points, gt_boxes, gt_labels, gt_mask, num_classes, topk, alpha,
              beta, eps=1e-9):
  """One image, loops, float64: the TOOD metric, top-k (stable: lowest index on ties),
  conflicts to the largest CIoU, scores normalised per box."""
  scores, boxes, points = (np.asarray(x, np.float64) for x in (scores, boxes, points))
  real = np.flatnonzero(gt_mask)
  num_priors = len(points)
  metric = np.zeros((len(gt_mask), num_priors))
  overlap = np.zeros_like(metric)
  pos = np.zeros(metric.shape, bool)
  for m in real:
    g = np.asarray(gt_boxes[m], np.float64)
    for a, (x, y) in enumerate(points):
      if min(x - g[0], y - g[1], g[2] - x, g[3] - y) > 1e-9:
        overlap[m, a] = max(np_ciou(g, boxes[a]), 0.0)
        metric[m, a] = scores[a, gt_labels[m]] ** alpha * overlap[m, a] ** beta
    top = np.argsort(-metric[m], kind="stable")[:topk]
    for a in top:
      g = gt_boxes[m]
      x, y = points[a]
      inside = min(x - g[0], y - g[1], g[2] - x, g[3] - y) > 1e-9
      pos[m, a] = inside
  for a in range(num_priors):
    if pos[:, a].sum() > 1:
      best = real[np.argmax(overlap[real, a])]
      pos[:, a] = False
      pos[best, a] = True
  labels = np.full(num_priors, num_classes)
  index = np.full(num_priors, -1)
  soft = np.zeros((num_priors, num_classes))
  for m in real:
    if not pos[m].any():
      continue
    max_metric, max_overlap = metric[m][pos[m]].max(), overlap[m][pos[m]].max()
    for a in np.flatnonzero(pos[m]):
      labels[a], index[a] = gt_labels[m], m
      soft[a, gt_labels[m]] = metric[m, a] * max_overlap / (max_metric + eps)
  return labels, index, soft


# ---------------------------------------------------------------- against ultralytics

@pytest.mark.parametrize("name", ["tal", "v8"])
def test_matches_ultralytics(name):
  f, args, kw = fixture_case(name)
  out = ASSIGN(*args, *gt(f), **kw)
  pos = f[f"{name}__positive"]
  assert pos.sum() > 10
  np.testing.assert_array_equal(out.positive, pos)
  np.testing.assert_array_equal(out.gt_index, np.where(pos, f[f"{name}__gt_index"], -1))
  np.testing.assert_allclose(out.scores, f[f"{name}__scores"], rtol=2e-6, atol=3e-7)
  if name == "tal":
    np.testing.assert_array_equal(out.labels, np.where(pos, f["tal__labels"], 4))
    np.testing.assert_array_equal(out.boxes, np.where(pos[..., None], f["tal__boxes"], 0))
  assert out.scores.dtype == jnp.float32 and out.labels.dtype == jnp.int32


def test_conflicts_are_exercised_by_the_fixture():
  # the fixture's image 0 has priors that both boxes 0 and 1 take: resolved by CIoU
  f, args, kw = fixture_case("tal")
  no_conflicts = 3 * kw["topk"]
  assert f["tal__positive"][0].sum() < no_conflicts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(seed):
  rng = np.random.default_rng(seed)
  f, (_, _, points), _ = fixture_case("tal")
  num_priors = len(points)
  scores = rng.uniform(0, 1, (2, num_priors, 3)).astype(np.float32)
  sides = rng.uniform(2, 40, (2, num_priors, 4)).astype(np.float32)
  boxes = np.concatenate([points - sides[..., :2], points + sides[..., 2:]], -1)
  xy = rng.uniform(0, 100, (2, 5, 2))
  wh = rng.uniform(4, 60, (2, 5, 2))
  gt_boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  gt_labels = rng.integers(0, 3, (2, 5))
  gt_mask = rng.uniform(size=(2, 5)) < 0.7
  kw = dict(num_classes=3, topk=6, alpha=0.5, beta=6.0)
  out = ASSIGN(scores, boxes, points, gt_boxes, gt_labels, gt_mask, **kw)
  for b in range(2):
    labels, index, soft = np_assign(scores[b], boxes[b], points, gt_boxes[b], gt_labels[b],
                                    gt_mask[b], **kw)
    np.testing.assert_array_equal(out.labels[b], labels)
    np.testing.assert_array_equal(out.gt_index[b], index)
    np.testing.assert_allclose(out.scores[b], soft, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- hand cases

POINTS = np.array([[x, y] for y in (4.0, 12.0, 20.0, 28.0) for x in (4.0, 12.0, 20.0, 28.0)],
                  np.float32)  # a 4x4 grid of stride 8: prior index = 4 * row + column


def hand(pred_boxes, gt_boxes, gt_labels, gt_mask, topk=4, scores=None):
  pred_boxes = np.broadcast_to(np.asarray(pred_boxes, np.float32), (1, 16, 4))
  if scores is None:
    scores = np.full((1, 16, 2), 0.5, np.float32)
  return ASSIGN(scores, pred_boxes, POINTS, np.asarray(gt_boxes, np.float32)[None],
                np.asarray(gt_labels, np.int32)[None], np.asarray(gt_mask)[None],
                num_classes=2, topk=topk)


def test_point_inside_two_boxes_goes_to_the_larger_ciou():
  # prior 5 (12, 12) is inside both boxes; its predicted box equals box 1
  pred = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (16, 1))
  pred[5] = [6, 6, 18, 20]
  out = hand(pred, [[2, 2, 26, 26], [6, 6, 18, 20]], [0, 1], [True, True], topk=1)
  assert out.positive[0, 5] and out.gt_index[0, 5] == 1 and out.labels[0, 5] == 1
  assert out.positive[0].sum() == 1  # box 0's only top prior was taken by box 1
  # the score: metric * max CIoU / max metric = CIoU = 1 for box 1
  np.testing.assert_allclose(out.scores[0, 5], [0.0, 1.0], atol=1e-6)


def test_topk_ties_go_to_the_lowest_prior_index():
  # equal scores and predicted boxes equal to the box relative to every prior: all
  # priors inside share one metric, and the lowest indices win
  out = hand([[0, 0, 31, 31]], [[0, 0, 31, 31], [0, 0, 0, 0]], [1, 0], [True, False], topk=3)
  np.testing.assert_array_equal(np.flatnonzero(out.positive[0]), [0, 1, 2])
  np.testing.assert_array_equal(out.labels[0, :4], [1, 1, 1, 2])


def test_box_with_no_prior_inside_is_never_assigned():
  # box 0 lies between priors; box 1 holds prior 15 (28, 28) on its border only
  out = hand([[0, 0, 8, 8]], [[5, 5, 11, 11], [20, 20, 28, 28]], [0, 1], [True, True])
  assert not out.positive.any()
  np.testing.assert_array_equal(out.labels, 2)
  np.testing.assert_array_equal(out.gt_index, -1)
  np.testing.assert_array_equal(out.scores, 0)


@pytest.mark.parametrize("slots", [0, 3])
def test_image_without_boxes_is_all_background(slots):
  boxes = np.full((slots, 4), np.nan, np.float32)
  out = hand([[0, 0, 8, 8]], boxes, np.zeros(slots, np.int32), np.zeros(slots, bool))
  assert not out.positive.any()
  np.testing.assert_array_equal(out.labels, 2)
  np.testing.assert_array_equal(out.boxes, 0)
  np.testing.assert_array_equal(out.scores, 0)


# ---------------------------------------------------------------- padding, tracing

def test_padding_never_changes_an_output():
  f, args, kw = fixture_case("tal")
  boxes, labels, mask = gt(f)
  ref = ASSIGN(*args, boxes, labels, mask, **kw)
  for value in (np.nan, np.inf, -1e30, 40.0):
    noisy_boxes, noisy_labels = boxes.copy(), labels.copy()
    noisy_boxes[~mask] = value
    noisy_labels[~mask] = 99
    out = ASSIGN(*args, noisy_boxes, noisy_labels, mask, **kw)
    jax.tree.map(np.testing.assert_array_equal, ref, out)
  # padding first, real boxes after it: the same assignment, slots renumbered
  perm = np.array([3, 2, 1, 0])
  moved = ASSIGN(*args, np.where(mask[:, perm, None], boxes[:, perm], np.nan), labels[:, perm],
                 mask[:, perm], **kw)
  for key in ("labels", "boxes", "positive", "scores"):
    np.testing.assert_array_equal(getattr(moved, key), getattr(ref, key), err_msg=key)
  np.testing.assert_array_equal(moved.gt_index, np.where(ref.positive, perm[ref.gt_index], -1))


def test_one_compilation_for_any_number_of_real_boxes():
  f, args, kw = fixture_case("tal")
  boxes, labels, _ = gt(f)
  fn, counter = jit_counting(lambda *a: jaxloss.task_aligned_assign(*a, **kw))
  for k in range(5):
    mask = np.arange(4)[None] < np.array([[k], [4 - k]])
    assert_finite(fn(*args, boxes, labels, mask).scores)
  assert counter.count == 1


def test_label_dtypes_and_low_precision_inputs():
  f, args, kw = fixture_case("tal")
  boxes, labels, mask = gt(f)
  ref = ASSIGN(*args, boxes, labels, mask, **kw)
  for dtype in (np.uint8, np.int8, np.int64):
    out = ASSIGN(*args, boxes, labels.astype(dtype), mask, **kw)
    jax.tree.map(np.testing.assert_array_equal, ref, out)
  low = ASSIGN(jnp.asarray(args[0], jnp.bfloat16), *args[1:], boxes, labels, mask, **kw)
  assert low.scores.dtype == jnp.float32
  assert (low.positive == ref.positive).mean() > 0.95


def test_hostile_inputs_are_finite():
  f, args, kw = fixture_case("tal")
  scores, pred, points = args
  scores = scores.copy()
  scores[0, :10] = 0.0
  scores[1, :10] = 1.0
  pred = pred.copy()
  pred[0, :20] = [30, 30, 30, 30]   # zero-area predictions
  pred[1, :20] = [40, 40, 10, 10]   # inverted predictions
  boxes = np.array([[[10, 10, 10, 30], [50, 50, 20, 20], [0, 0, 1e-3, 1e-3], [1, 1, 2, 2]],
                    [[-50, -50, 500, 500], [30, 30, 30, 30], [0, 0, 0, 0], [5, 5, 60, 9]]],
                   np.float32)
  with jax.debug_nans(True):
    out = jaxloss.task_aligned_assign(scores, pred, points, boxes, f["gt_labels"],
                                      np.ones((2, 4), bool), **kw)
  assert_finite(out)
  assert out.positive[1].any()


def test_errors_name_the_argument():
  f, (scores, pred, points), kw = fixture_case("tal")
  boxes, labels, mask = gt(f)
  with pytest.raises(ValueError, match="pred_scores must be"):
    jaxloss.task_aligned_assign(scores, pred, points, boxes, labels, mask, num_classes=3)
  with pytest.raises(ValueError, match="anchor_points must be"):
    jaxloss.task_aligned_assign(scores, pred, points[:5], boxes, labels, mask, num_classes=4)
  with pytest.raises(ValueError, match="topk must be"):
    jaxloss.task_aligned_assign(scores, pred, points, boxes, labels, mask, num_classes=4,
                                topk=1000)
  with pytest.raises(TypeError, match="gt_mask. must be boolean"):
    jaxloss.task_aligned_assign(scores, pred, points, boxes, labels, mask.astype(np.int32),
                                num_classes=4)
  with pytest.raises(TypeError, match="gt_labels"):
    jaxloss.task_aligned_assign(scores, pred, points, boxes, labels.astype(np.float32), mask,
                                num_classes=4)
  with pytest.raises(ValueError, match="gt_labels.* must be"):
    jaxloss.task_aligned_assign(scores, pred, points, boxes, labels[:, :2], mask, num_classes=4)
