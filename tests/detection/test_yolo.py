"""yolov8_loss: ultralytics 8.3.40 v8DetectionLoss values and gradients
(tests/fixtures/ultralytics/ultralytics_yolo.npz), padding invariance, retracing, shard_map,
low precision, hostile inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

KEYS = ("box_loss", "cls_loss", "dfl_loss", "loss", "score_sum")


def heads(f):
  return ([f[f"v8__cls_logits_l{k}"] for k in range(3)],
          [f[f"v8__box_logits_l{k}"] for k in range(3)])


def _value_and_grad(cls, box, boxes, labels, mask, **kw):
  def total(cls, box):
    out = jaxloss.yolov8_loss(cls, box, boxes, labels, mask, num_classes=3, **kw)
    return out["loss"], out
  (_, out), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(cls, box)
  return out, grads


LOSS_AND_GRAD, TRACES = jit_counting(_value_and_grad)


def test_values_and_gradients_match_ultralytics():
  f = load_fixture("ultralytics_yolo.npz")
  out, (g_cls, g_box) = LOSS_AND_GRAD(*heads(f), f["gt_boxes"], f["gt_labels"], f["gt_mask"])
  for key in KEYS:
    np.testing.assert_allclose(out[key], f[f"v8__{key}"], rtol=2e-6, err_msg=key)
  assert float(out["num_pos"]) == f["v8__positive"].sum()
  for k in range(3):
    np.testing.assert_allclose(g_cls[k], f[f"v8__grad_cls_logits_l{k}"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_box[k], f[f"v8__grad_box_logits_l{k}"], rtol=1e-5, atol=1e-7)
  assert np.abs(g_box[0]).max() > 1e-2  # the box terms do reach the bins


def test_padding_never_changes_outputs_or_gradients():
  f = load_fixture("ultralytics_yolo.npz")
  boxes, labels, mask = f["gt_boxes"], f["gt_labels"], f["gt_mask"]
  ref = LOSS_AND_GRAD(*heads(f), boxes, labels, mask)
  before = TRACES.count
  for value in (np.nan, np.inf, 1e30, 20.0):
    noisy = boxes.copy()
    noisy[~mask] = value
    out = LOSS_AND_GRAD(*heads(f), noisy, np.where(mask, labels, 7), mask)
    jax.tree.map(np.testing.assert_array_equal, ref, out)
  for k in range(5):  # any number of real boxes: no retrace
    some = np.arange(4)[None] < np.array([[k], [4 - k]])
    assert_finite(LOSS_AND_GRAD(*heads(f), boxes, labels, some))
  assert TRACES.count == before


def test_no_boxes_gives_zero_box_and_dfl_terms():
  f = load_fixture("ultralytics_yolo.npz")
  cls, box = heads(f)
  for slots in (0, 2):
    out, (g_cls, g_box) = LOSS_AND_GRAD(cls, box, np.full((2, slots, 4), np.nan, np.float32),
                                        np.zeros((2, slots), np.int32), np.zeros((2, slots), bool))
    assert out["box_loss"] == 0 and out["dfl_loss"] == 0 and out["score_sum"] == 1
    for g in g_box:
      np.testing.assert_array_equal(g, 0)
    # all-background BCE, summed over every prior and class (normaliser 1)
    logits = np.concatenate([x.reshape(2, -1, 3) for x in cls], 1).astype(np.float64)
    bce = np.sum(np.logaddexp(0, logits)) * 0.5
    np.testing.assert_allclose(out["cls_loss"], bce, rtol=1e-5)
    assert_finite(g_cls)


def test_shard_map_with_axis_name_equals_whole_batch():
  f = load_fixture("ultralytics_yolo.npz")
  cls, box = heads(f)
  gt = (f["gt_boxes"], f["gt_labels"], f["gt_mask"])
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("batch",))
  spec = jax.sharding.PartitionSpec("batch")

  def per_device(cls, box, boxes, labels, mask):
    out, grads = _value_and_grad(cls, box, boxes, labels, mask, axis_name="batch")
    out = jax.tree.map(lambda v: jax.lax.pmean(v, "batch"), out)
    return out, jax.tree.map(lambda g: g / 2, grads)

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec,
                                  out_specs=(jax.sharding.PartitionSpec(), spec)))
  out, (g_cls, g_box) = sharded(cls, box, *gt)
  for key in KEYS[:-1]:
    np.testing.assert_allclose(out[key], f[f"v8__{key}"], rtol=1e-5, err_msg=key)
  # the normaliser is the mean over devices, as FCOS's num_pos
  np.testing.assert_allclose(out["score_sum"], f["v8__score_sum"] / 2, rtol=1e-5)
  for k in range(3):
    np.testing.assert_allclose(g_cls[k], f[f"v8__grad_cls_logits_l{k}"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_box[k], f[f"v8__grad_box_logits_l{k}"], rtol=1e-4, atol=1e-7)


def test_low_precision_inputs_under_vmap():
  f = load_fixture("ultralytics_yolo.npz")
  stacked = jax.tree.map(lambda x: jnp.asarray(np.stack([x, x]), jnp.bfloat16), heads(f))
  out = jax.jit(jax.vmap(lambda c, b: jaxloss.yolov8_loss(
      c, b, f["gt_boxes"], f["gt_labels"].astype(np.uint8), f["gt_mask"], num_classes=3)))(
          *stacked)
  assert out["loss"].dtype == jnp.float32
  np.testing.assert_allclose(out["loss"], [f["v8__loss"]] * 2, rtol=3e-2)


def test_hostile_inputs_are_finite():
  f = load_fixture("ultralytics_yolo.npz")
  cls, box = heads(f)
  cls = [np.where(np.arange(x.size).reshape(x.shape) % 2, 1e4, -1e4).astype(np.float32)
         for x in cls]
  box = [x * 1e3 for x in box]
  boxes = np.array([[[10, 10, 10, 30], [50, 50, 20, 20], [0, 0, 1e-3, 1e-3], [1, 1, 2, 2]],
                    [[-50, -50, 500, 500], [30, 30, 30, 30], [0, 0, 0, 0], [5, 5, 60, 9]]],
                   np.float32)
  with jax.debug_nans(True):
    out, grads = _value_and_grad(cls, box, boxes, f["gt_labels"], np.ones((2, 4), bool))
  assert_finite((out, grads))
  assert out["num_pos"] > 0


def test_gains_scale_their_terms():
  f = load_fixture("ultralytics_yolo.npz")
  gt = (f["gt_boxes"], f["gt_labels"], f["gt_mask"])
  loss = functools.partial(jaxloss.yolov8_loss, *heads(f), *gt, num_classes=3)
  unit = loss(box_weight=1.0, cls_weight=1.0, dfl_weight=1.0)
  np.testing.assert_allclose(unit["box_loss"] * 7.5, f["v8__box_loss"], rtol=2e-6)
  np.testing.assert_allclose(unit["dfl_loss"] * 1.5, f["v8__dfl_loss"], rtol=2e-6)


def test_errors_name_the_argument():
  f = load_fixture("ultralytics_yolo.npz")
  cls, box = heads(f)
  gt = (f["gt_boxes"], f["gt_labels"], f["gt_mask"])
  with pytest.raises(ValueError, match="cls_logits must be a list"):
    jaxloss.yolov8_loss(cls[0], box, *gt, num_classes=3)
  with pytest.raises(ValueError, match="num_classes=4"):
    jaxloss.yolov8_loss(cls, box, *gt, num_classes=4)
  with pytest.raises(ValueError, match="4 \\* reg_max = 32"):
    jaxloss.yolov8_loss(cls, box, *gt, num_classes=3, reg_max=8)
  with pytest.raises(ValueError, match="box_logits levels"):
    jaxloss.yolov8_loss(cls, box[::-1], *gt, num_classes=3)
  with pytest.raises(TypeError, match="gt_mask"):
    jaxloss.yolov8_loss(cls, box, gt[0], gt[1], gt[2].astype(np.float32), num_classes=3)


def test_strict_dtype_and_rank_promotion():
  f = load_fixture("ultralytics_yolo.npz")
  with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
    out = jaxloss.yolov8_loss(*heads(f), f["gt_boxes"], f["gt_labels"], f["gt_mask"],
                              num_classes=3)
  np.testing.assert_allclose(out["loss"], f["v8__loss"], rtol=2e-6)
