"""detr_matching_cost and detr_loss against facebookresearch/detr and Deformable-DETR."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

REF = load_fixture("detr_criterion.npz")
NUM_CLASSES = 5
FORMS = {"detr": dict(class_loss="softmax"),
         "ddetr": dict(class_loss="focal", cls_weight=2.0, class_cost=2.0)}


def inputs(gt_set, form):
  f32 = lambda x: np.asarray(x, np.float32)
  return (f32(REF[f"{gt_set}__{form}__logits"]), f32(REF[f"{gt_set}__box_preds"]),
          f32(REF[f"{gt_set}__gt_boxes"]), REF[f"{gt_set}__gt_labels"],
          REF[f"{gt_set}__gt_mask"])


@functools.partial(jax.jit, static_argnames=("form", "axis_name"))
def loss_and_grads(logits, boxes, gt_boxes, gt_labels, gt_mask, form, axis_name=None):
  """``detr_loss`` of stacked layers ``[L, B, Q, ...]`` (the last is the output) and its grads."""

  def fn(logits, boxes):
    out = jaxloss.detr_loss(logits[-1], boxes[-1], gt_boxes, gt_labels, gt_mask,
                            num_classes=NUM_CLASSES, aux_cls_logits=logits[:-1],
                            aux_box_preds=boxes[:-1], axis_name=axis_name, **FORMS[form])
    return out["loss"], out

  (_, out), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(logits, boxes)
  return out, grads


@pytest.mark.parametrize("gt_set", ["main", "allempty"])
@pytest.mark.parametrize("form", ["detr", "ddetr"])
def test_values_and_gradients_match_the_official_criterion(form, gt_set):
  out, (g_logits, g_boxes) = loss_and_grads(*inputs(gt_set, form), form=form)
  ref = lambda k: REF[f"{gt_set}__{form}__{k}"]
  for ours, theirs in [("cls_loss", "loss_ce"), ("bbox_loss", "loss_bbox"),
                       ("giou_loss", "loss_giou")]:
    np.testing.assert_allclose(out[ours], ref(theirs), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(out[f"aux_{ours}"], [ref(f"{theirs}_0")], rtol=2e-6, atol=1e-7)
  np.testing.assert_allclose(out["loss"], ref("total"), rtol=2e-6)
  np.testing.assert_allclose(g_logits, ref("grad_logits"), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_boxes, ref("grad_boxes"), rtol=1e-5, atol=2e-6)
  if gt_set == "allempty":
    assert float(out["bbox_loss"]) == 0.0 and float(out["giou_loss"]) == 0.0
    assert not np.any(np.asarray(g_boxes))


@pytest.mark.parametrize("form", ["detr", "ddetr"])
def test_matching_cost_matches_the_official_matcher(form):
  logits, boxes, gt_boxes, gt_labels, gt_mask = inputs("main", form)
  kw = {k: v for k, v in FORMS[form].items() if k != "cls_weight"}
  cost = jaxloss.detr_matching_cost(logits, boxes, gt_boxes, gt_labels, **kw)
  ref = REF[f"main__{form}__cost"]
  real = np.broadcast_to(gt_mask[None, :, None, :], ref.shape)
  np.testing.assert_allclose(np.asarray(cost)[real], ref[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["detr", "ddetr"])
def test_padding_and_target_order_never_change_the_loss(form):
  logits, boxes, gt_boxes, gt_labels, gt_mask = inputs("main", form)
  rng = np.random.default_rng(0)
  b, m = gt_mask.shape
  extra = 3
  order = np.stack([rng.permutation(m + extra) for _ in range(b)])
  pad = lambda x, fill: np.concatenate([x, np.full((b, extra) + x.shape[2:], fill, x.dtype)], 1)
  take = lambda x: np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  p_boxes = pad(np.where(gt_mask[..., None], gt_boxes, np.nan), np.inf)
  p_labels = pad(np.where(gt_mask, gt_labels, -7), 99).astype(np.uint8)
  args = (take(p_boxes), take(p_labels), take(pad(gt_mask, False)))
  with jax.debug_nans(True):
    out, grads = loss_and_grads(logits, boxes, *args, form=form)
  ref, ref_grads = loss_and_grads(logits, boxes, gt_boxes, gt_labels, gt_mask, form=form)
  for k in ref:
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, err_msg=k)
  for g, r in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["detr", "ddetr"])
def test_shard_map_equals_the_whole_batch(form, devices):
  rng = np.random.default_rng(1)
  b, q, m, k = len(devices), 6, 3, NUM_CLASSES + (form == "detr")
  logits = rng.normal(0, 2, (2, b, q, k)).astype(np.float32)
  boxes = np.concatenate([rng.uniform(0.2, 0.8, (2, b, q, 2)),
                          rng.uniform(0.05, 0.4, (2, b, q, 2))], -1).astype(np.float32)
  gt_boxes = boxes[0, :, :m] + 0.01
  gt_labels = rng.integers(0, NUM_CLASSES, (b, m))
  gt_mask = np.arange(m) < rng.integers(0, m + 1, b)[:, None]
  whole, whole_grads = loss_and_grads(logits, boxes, gt_boxes, gt_labels, gt_mask, form=form)

  def per_device(*args):
    out, grads = loss_and_grads(*args, form=form, axis_name="d")
    return jax.tree.map(lambda x: jax.lax.pmean(x, "d"), out), grads

  mesh = Mesh(np.array(devices), ("d",))
  layers, batch = PartitionSpec(None, "d"), PartitionSpec("d")
  out, grads = jax.jit(jax.shard_map(per_device, mesh=mesh,
                                     in_specs=(layers, layers, batch, batch, batch),
                                     out_specs=(PartitionSpec(), layers)))(
      logits, boxes, gt_boxes, gt_labels, gt_mask)
  for key in ("loss", "cls_loss", "bbox_loss", "giou_loss", "aux_cls_loss"):
    np.testing.assert_allclose(out[key], whole[key], rtol=1e-5, err_msg=key)
  # num_boxes is DETR's all-reduced mean count per device (here > 1, so not clamped).
  np.testing.assert_allclose(out["num_boxes"] * b, whole["num_boxes"], rtol=1e-6)
  # Each device's gradient is of its own loss; the whole loss is their mean over b devices.
  for g, w in zip(grads, whole_grads, strict=True):
    np.testing.assert_allclose(g, w * b, rtol=1e-4, atol=1e-6)


def test_hostile_inputs_are_finite():
  rng = np.random.default_rng(2)
  logits = rng.choice([-1e4, 1e4, 0.0], size=(2, 2, 5, NUM_CLASSES + 1)).astype(np.float32)
  boxes = rng.uniform(0, 1, (2, 2, 5, 4)).astype(np.float32)
  boxes[..., 2] = 0.0                       # zero-width predictions
  gt_boxes = np.array([[[0.5, 0.5, 0.0, 0.0], [0.3, 0.3, 0.2, 0.0]],
                       [[0.1, 0.1, 1e-9, 1e-9], [np.nan, np.nan, np.nan, np.nan]]], np.float32)
  gt_mask = np.array([[True, True], [True, False]])
  for form in FORMS:
    lg = logits if form == "detr" else logits[..., :NUM_CLASSES]
    out, grads = loss_and_grads(lg, boxes, gt_boxes, np.array([[0, 4], [2, 0]]), gt_mask,
                                form=form)
    assert_finite((out, grads))


def test_low_precision_integer_labels_and_one_trace():
  logits, boxes, gt_boxes, gt_labels, gt_mask = inputs("main", "detr")
  fn, counter = jit_counting(functools.partial(jaxloss.detr_loss, num_classes=NUM_CLASSES))
  ref = fn(logits[-1], boxes[-1], gt_boxes, gt_labels, gt_mask)
  low = fn(jnp.asarray(logits[-1], jnp.bfloat16), jnp.asarray(boxes[-1], jnp.bfloat16),
           gt_boxes, gt_labels, gt_mask)
  assert all(v.dtype == jnp.float32 for v in low.values())
  np.testing.assert_allclose(low["loss"], ref["loss"], rtol=5e-2)
  assert counter.count == 2
  for n in range(gt_mask.shape[1] + 1):
    mask = np.broadcast_to(np.arange(gt_mask.shape[1]) < n, gt_mask.shape)
    assert_finite(fn(logits[-1], boxes[-1], gt_boxes, gt_labels, mask))
  wide = fn(logits[-1], boxes[-1], gt_boxes, gt_labels.astype(np.int64), gt_mask)
  narrow = fn(logits[-1], boxes[-1], gt_boxes, gt_labels.astype(np.uint8), gt_mask)
  np.testing.assert_array_equal(narrow["loss"], ref["loss"])
  np.testing.assert_array_equal(wide["loss"], ref["loss"])
  assert counter.count == 3          # + uint8; int64 arrives as int32 without x64


def test_errors():
  logits, boxes, gt_boxes, gt_labels, gt_mask = (x[-1] if x.ndim == 4 else x
                                                 for x in inputs("main", "detr"))
  call = functools.partial(jaxloss.detr_loss, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match=r"num_classes \+ 1"):
    call(logits[..., :-1], boxes, gt_boxes, gt_labels, gt_mask)
  with pytest.raises(ValueError, match="no 'no object' channel"):
    call(logits, boxes, gt_boxes, gt_labels, gt_mask, class_loss="focal")
  with pytest.raises(ValueError, match="class_loss must be one of"):
    call(logits, boxes, gt_boxes, gt_labels, gt_mask, class_loss="sigmoid")
  with pytest.raises(TypeError, match="`gt_mask` must be boolean"):
    call(logits, boxes, gt_boxes, gt_labels, gt_mask.astype(np.int32))
  with pytest.raises(TypeError, match="`gt_labels` must hold integer"):
    call(logits, boxes, gt_boxes, gt_labels.astype(np.float32), gt_mask)
  with pytest.raises(ValueError, match="`box_preds` must be"):
    call(logits, boxes[..., :2], gt_boxes, gt_labels, gt_mask)
  with pytest.raises(ValueError, match="both `aux_cls_logits` and `aux_box_preds`"):
    call(logits, boxes, gt_boxes, gt_labels, gt_mask, aux_cls_logits=logits[None])
  with pytest.raises(ValueError, match=r"stacked \[L, B, Q"):
    call(logits, boxes, gt_boxes, gt_labels, gt_mask, aux_cls_logits=logits,
         aux_box_preds=boxes)
  with pytest.raises(ValueError, match="fewer queries than targets"):
    call(logits[:, :2], boxes[:, :2], gt_boxes, gt_labels, gt_mask)
