"""retinanet_loss and gfl_loss: mmdetection 3.3 RetinaHead / GFLHead loss_by_feat values and
gradients (tests/fixtures/mmdet/mmdet_anchor.npz), NaN-padding invariance, one trace for 0..M
real boxes, shard_map with axis_name equal to the whole batch, bfloat16, hostile inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

try:
  from jax import shard_map
except ImportError:  # older jax
  from jax.experimental.shard_map import shard_map

RETINA = {
    "l1": {},
    "smoothl1": dict(box_loss="smooth_l1", smooth_l1_beta=0.11),
    "giou": dict(box_loss="giou", reg_weight=2.0),
}


@pytest.fixture(scope="module")
def fx():
  return load_fixture("mmdet_anchor.npz")


def heads(fx, name):
  return ([fx[f"{name}_cls_l{k}"] for k in range(5)], [fx[f"{name}_box_l{k}"] for k in range(5)])


def gt(fx, name):
  return fx[f"gt_boxes_{name}"], fx[f"gt_labels_{name}"], fx[f"gt_mask_{name}"]


def retina(cls, box, *g, **kw):
  return jaxloss.retinanet_loss(cls, box, *g, num_classes=3, **kw)


def gfl(cls, box, *g, **kw):
  return jaxloss.gfl_loss(cls, box, *g, num_classes=3, reg_max=8, **kw)


def flat(levels):
  return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in levels], 1)


@pytest.mark.parametrize("cfg", list(RETINA))
@pytest.mark.parametrize("gt_set", ["main", "empty1"])
def test_retinanet_matches_mmdet(fx, cfg, gt_set):
  cls, box = heads(fx, "retina")
  g = gt(fx, gt_set)
  p = f"retina_{cfg}_{gt_set}__"
  fn = lambda c, b: retina(c, b, *g, **RETINA[cfg])
  out = fn(cls, box)
  np.testing.assert_allclose(out["cls_loss"], fx[p + "loss_cls"], rtol=2e-6)
  np.testing.assert_allclose(out["reg_loss"], fx[p + "loss_bbox"], rtol=2e-6)
  assert float(out["num_pos"]) == {"main": 182, "empty1": 113}[gt_set]  # 112 + an empty image
  if p + "grad_box" in fx or cfg == "l1":
    g_cls, g_box = jax.grad(lambda c, b: fn(c, b)["loss"], argnums=(0, 1))(cls, box)
    np.testing.assert_allclose(flat(g_cls), fx[f"retina_{gt_set}__grad_cls"], rtol=1e-5,
                               atol=1e-8)
    if p + "grad_box" in fx:
      np.testing.assert_allclose(flat(g_box), fx[p + "grad_box"], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("gt_set", ["main", "empty1"])
def test_gfl_matches_mmdet(fx, gt_set):
  cls, box = heads(fx, "gfl")
  g = gt(fx, gt_set)
  p = f"gfl_{gt_set}__"
  fn = lambda c, b: gfl(c, b, *g)
  out = fn(cls, box)
  for ours, theirs in (("cls_loss", "loss_cls"), ("reg_loss", "loss_bbox"),
                       ("dfl_loss", "loss_dfl")):
    np.testing.assert_allclose(out[ours], fx[p + theirs], rtol=2e-6)
  np.testing.assert_allclose(out["loss"], out["cls_loss"] + out["reg_loss"] + out["dfl_loss"],
                             rtol=1e-6)
  g_cls, g_box = jax.grad(lambda c, b: fn(c, b)["loss"], argnums=(0, 1))(cls, box)
  np.testing.assert_allclose(flat(g_cls), fx[p + "grad_cls"], rtol=1e-4, atol=1e-7)
  if p + "grad_box" in fx:
    np.testing.assert_allclose(flat(g_box), fx[p + "grad_box"], rtol=1e-4, atol=1e-7)


LOSSES = {"retina": (retina, {"box_loss": "giou"}), "gfl": (gfl, {})}


def _pad_nan(boxes, labels, mask, extra=2):
  b = mask.shape[0]
  boxes = np.concatenate([boxes, np.zeros((b, extra, 4), boxes.dtype)], 1)
  labels = np.concatenate([labels, np.full((b, extra), 99, labels.dtype)], 1)
  mask = np.concatenate([mask, np.zeros((b, extra), bool)], 1)
  return np.where(mask[..., None], boxes, np.nan).astype(np.float32), labels, mask


@pytest.mark.parametrize("name", list(LOSSES))
def test_nan_padding_changes_nothing_and_no_nan_is_formed(fx, name):
  fn, kw = LOSSES[name]
  cls, box = heads(fx, name)
  g = gt(fx, "empty1")
  value_grad = jax.jit(jax.value_and_grad(
      lambda c, b, *g: fn(c, b, *g, **kw)["loss"], argnums=(0, 1)))
  want = value_grad(cls, box, *g)
  with jax.debug_nans(True):
    got = value_grad(cls, box, *_pad_nan(*g))
  for w, o in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(w, o)


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_trace_for_any_number_of_real_boxes(fx, name):
  fn, kw = LOSSES[name]
  cls, box = heads(fx, name)
  boxes, labels, _ = gt(fx, "main")
  step, counter = jit_counting(lambda c, b, m: jax.grad(
      lambda c: fn(c, b, boxes, labels, m, **kw)["loss"])(c))
  for n in range(6):
    step(cls, box, np.arange(5)[None] < np.array([[n], [n // 2]]))
  assert counter.count == 1


@pytest.mark.parametrize("name", list(LOSSES))
def test_shard_map_over_the_batch_equals_one_device(fx, name):
  fn, kw = LOSSES[name]
  cls, box = heads(fx, name)
  g = gt(fx, "main")
  mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))

  def per_device(c, b, *g):
    loss, grads = jax.value_and_grad(
        lambda c, b: fn(c, b, *g, axis_name="batch", **kw)["loss"], argnums=(0, 1))(c, b)
    return jax.lax.pmean(loss, "batch"), grads

  spec = PartitionSpec("batch")
  sharded = jax.jit(shard_map(per_device, mesh=mesh, in_specs=spec,
                              out_specs=(PartitionSpec(), spec)))
  loss, grads = sharded(cls, box, *g)
  want, want_grads = jax.value_and_grad(lambda c, b: fn(c, b, *g, **kw)["loss"],
                                        argnums=(0, 1))(cls, box)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # per-device gradients are of the device's loss; their pmean is the whole batch's
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(np.asarray(got) / 2, ref, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", list(LOSSES))
def test_bfloat16_in_float32_out(fx, name):
  fn, kw = LOSSES[name]
  cls, box = heads(fx, name)
  out = fn([c.astype(jnp.bfloat16) for c in cls], [b.astype(jnp.bfloat16) for b in box],
           *gt(fx, "main"), **kw)
  assert all(v.dtype == jnp.float32 for v in out.values())
  ref = fn(cls, box, *gt(fx, "main"), **kw)
  np.testing.assert_allclose(out["loss"], ref["loss"], rtol=3e-2)


@pytest.mark.parametrize("name,box_loss", [("retina", "l1"), ("retina", "giou"), ("gfl", None)])
def test_hostile_inputs_are_finite(fx, name, box_loss):
  fn, _ = LOSSES[name]
  kw = {} if box_loss is None else {"box_loss": box_loss}
  cls, box = heads(fx, name)
  cls = [np.where(np.arange(c.size).reshape(c.shape) % 2, 1e4, -1e4).astype(np.float32)
         for c in cls]
  box = [np.full_like(b, 1e4) for b in box]
  boxes = np.array([[[10, 10, 10, 40], [50, 60, 40, 50], [0, 0, 128, 128], [3, 3, 3, 3],
                     [0, 0, 0, 0]]] * 2, np.float32)  # zero-width, inverted, whole image
  labels, mask = np.zeros((2, 5), np.int32), np.array([[True] * 4 + [False]] * 2)
  value, grads = jax.value_and_grad(
      lambda c, b: fn(c, b, boxes, labels, mask, **kw)["loss"], argnums=(0, 1))(cls, box)
  assert_finite((value, grads))
  none = fn(cls, box, boxes, labels, np.zeros_like(mask), **kw)  # no real box at all
  assert_finite(none)
  assert float(none["reg_loss"]) == 0.0


def test_errors(fx):
  cls, box = heads(fx, "retina")
  g = gt(fx, "main")
  with pytest.raises(ValueError, match="box_loss must be one of"):
    retina(cls, box, *g, box_loss="iou")
  with pytest.raises(ValueError, match="one per stride"):
    retina(cls[:4], box, *g)
  with pytest.raises(ValueError, match=r"cls_logits have \[27\] channels, expected 36 = 9 anchors"):
    jaxloss.retinanet_loss(cls, box, *g, num_classes=4)
  with pytest.raises(ValueError, match="box_preds have"):  # the fixture's reg_max is 8
    jaxloss.gfl_loss(*heads(fx, "gfl"), *g, num_classes=3)
  with pytest.raises(TypeError, match="gt_mask. must be boolean"):
    retina(cls, box, g[0], g[1], g[2].astype(np.int32))
