"""yolox_loss: mmdetection 3.3.0 YOLOXHead.loss_by_feat values and gradients
(tests/fixtures/mmdet/mmdet_yolox.npz), padding invariance, retracing, shard_map, low
precision, hostile inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

NAMES = {"cls_loss": "loss_cls", "box_loss": "loss_bbox", "obj_loss": "loss_obj",
         "l1_loss": "loss_l1", "loss": "loss"}
HEADS = ("cls_logits", "box_preds", "obj_logits")


def heads(f):
  return tuple([f[f"{key}_l{k}"] for k in range(3)] for key in HEADS)


def gt(f):
  return f["gt_boxes"], f["gt_labels"], f["gt_mask"]


def _value_and_grad(cls, box, obj, boxes, labels, mask, **kw):
  def total(cls, box, obj):
    out = jaxloss.yolox_loss(cls, box, obj, boxes, labels, mask, num_classes=3, **kw)
    return out["loss"], out
  (_, out), grads = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(cls, box, obj)
  return out, grads


LOSS_AND_GRAD, TRACES = jit_counting(_value_and_grad, static_argnames=("use_l1",))


def check_against_fixture(f, name, out, grads, rtol=2e-6, grad_rtol=1e-5):
  for key, ref in NAMES.items():
    expected = f.get(f"{name}__{ref}", 0.0)
    np.testing.assert_allclose(out[key], expected, rtol=rtol, atol=1e-7, err_msg=key)
  for key, levels in zip(HEADS, grads, strict=True):
    for k, g in enumerate(levels):
      np.testing.assert_allclose(g, f[f"{name}__grad_{key}_l{k}"], rtol=grad_rtol, atol=1e-7,
                                 err_msg=f"{key} level {k}")


@pytest.mark.parametrize("name", ["plain", "l1"])
def test_values_and_gradients_match_mmdet(name):
  f = load_fixture("mmdet_yolox.npz")
  out, grads = LOSS_AND_GRAD(*heads(f), *gt(f), use_l1=name == "l1")
  check_against_fixture(f, name, out, grads)
  assert out["num_pos"] >= 10
  assert np.abs(grads[1][0]).max() > 1e-2


def test_padding_never_changes_outputs_or_gradients():
  f = load_fixture("mmdet_yolox.npz")
  boxes, labels, mask = gt(f)
  ref = LOSS_AND_GRAD(*heads(f), boxes, labels, mask, use_l1=True)
  before = TRACES.count
  for value in (np.nan, np.inf, 1e30, 20.0):
    noisy = boxes.copy()
    noisy[~mask] = value
    out = LOSS_AND_GRAD(*heads(f), noisy, np.where(mask, labels, 7), mask, use_l1=True)
    jax.tree.map(np.testing.assert_array_equal, ref, out)
  for k in range(5):
    some = np.arange(4)[None] < np.array([[k], [4 - k]])
    assert_finite(LOSS_AND_GRAD(*heads(f), boxes, labels, some, use_l1=True))
  assert TRACES.count == before


def test_no_boxes_leaves_only_the_objectness_term():
  f = load_fixture("mmdet_yolox.npz")
  empty = (np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32), np.zeros((2, 0), bool))
  out, (g_cls, g_box, g_obj) = LOSS_AND_GRAD(*heads(f), *empty, use_l1=True)
  for key in ("cls_loss", "box_loss", "l1_loss"):
    assert out[key] == 0, key
  for g in (*g_cls, *g_box):
    np.testing.assert_array_equal(g, 0)
  obj = np.concatenate([x.reshape(-1) for x in heads(f)[2]]).astype(np.float64)
  np.testing.assert_allclose(out["obj_loss"], np.sum(np.logaddexp(0, obj)), rtol=1e-5)
  assert_finite(g_obj)


def test_shard_map_with_axis_name_equals_whole_batch():
  f = load_fixture("mmdet_yolox.npz")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("batch",))
  spec = jax.sharding.PartitionSpec("batch")

  def per_device(*args):
    out, grads = _value_and_grad(*args, use_l1=True, axis_name="batch")
    out = jax.tree.map(lambda v: jax.lax.pmean(v, "batch"), out)
    return out, jax.tree.map(lambda g: g / 2, grads)

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec,
                                  out_specs=(jax.sharding.PartitionSpec(), spec)))
  out, grads = sharded(*heads(f), *gt(f))
  check_against_fixture(f, "l1", out, grads, rtol=1e-5, grad_rtol=1e-4)


def test_low_precision_inputs_under_vmap():
  f = load_fixture("mmdet_yolox.npz")
  stacked = jax.tree.map(lambda x: jnp.asarray(np.stack([x, x]), jnp.bfloat16), heads(f))
  boxes, labels, mask = gt(f)
  out = jax.jit(jax.vmap(lambda c, b, o: jaxloss.yolox_loss(
      c, b, o, boxes, labels.astype(np.int8), mask, num_classes=3)))(*stacked)
  assert out["loss"].dtype == jnp.float32
  np.testing.assert_allclose(out["loss"], [f["plain__loss"]] * 2, rtol=5e-2)


def test_hostile_inputs_are_finite():
  f = load_fixture("mmdet_yolox.npz")
  cls, box, obj = heads(f)
  flip = lambda x: np.where(np.arange(x.size).reshape(x.shape) % 2, 1e4, -1e4).astype(np.float32)
  cls, obj = [flip(x) for x in cls], [flip(x) for x in obj]
  boxes = np.array([[[10, 10, 10, 30], [50, 50, 20, 20], [0, 0, 1e-3, 1e-3], [1, 1, 2, 2]],
                    [[-50, -50, 500, 500], [30, 30, 30, 30], [0, 0, 0, 0], [5, 5, 60, 9]]],
                   np.float32)
  with jax.debug_nans(True):
    out, grads = _value_and_grad(cls, box, obj, boxes, f["gt_labels"], np.ones((2, 4), bool),
                                 use_l1=True)
  assert_finite((out, grads))
  assert out["num_pos"] > 1


def test_errors_name_the_argument():
  f = load_fixture("mmdet_yolox.npz")
  cls, box, obj = heads(f)
  with pytest.raises(ValueError, match="obj_logits must be a list"):
    jaxloss.yolox_loss(cls, box, obj[0], *gt(f), num_classes=3)
  with pytest.raises(ValueError, match="num_classes=2"):
    jaxloss.yolox_loss(cls, box, obj, *gt(f), num_classes=2)
  with pytest.raises(ValueError, match="box_preds must have 4 channels"):
    jaxloss.yolox_loss(cls, [x[..., :2] for x in box], obj, *gt(f), num_classes=3)


def test_strict_dtype_and_rank_promotion():
  f = load_fixture("mmdet_yolox.npz")
  with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
    out = jaxloss.yolox_loss(*heads(f), *gt(f), num_classes=3, use_l1=True)
  np.testing.assert_allclose(out["loss"], f["l1__loss"], rtol=2e-6)
