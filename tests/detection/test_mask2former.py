"""point_sample, uncertain_point_coords and mask2former_loss against Mask2Former / detectron2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxloss
from tests.utils import assert_finite, jit_counting, load_fixture

REF = load_fixture("mask2former_criterion.npz")
NUM_CLASSES, P = 4, 64


def ref(key):
  return REF[f"main__{key}"]


def criterion_inputs():
  f32 = lambda x: np.asarray(x, np.float32)
  return (f32(ref("logits")), f32(ref("mask_logits")), f32(ref("gt_masks")), ref("gt_labels"),
          ref("gt_mask"))


@functools.partial(jax.jit, static_argnames=("axis_name",))
def loss_and_grads(logits, masks, gt_masks, gt_labels, gt_mask, match, points, axis_name=None):

  def fn(logits, masks):
    out = jaxloss.mask2former_loss(logits, masks, gt_masks, gt_labels, gt_mask,
                                   num_classes=NUM_CLASSES, num_points=P,
                                   match_point_coords=match, loss_point_coords=points,
                                   axis_name=axis_name)
    return out["loss"], out

  (_, out), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(logits, masks)
  return out, grads


def test_point_sample_matches_detectron2():
  maps, coords = REF["ps__maps"].astype(np.float32), REF["ps__coords"].astype(np.float32)
  out, vjp = jax.vjp(lambda m: jaxloss.point_sample(m, coords), maps)
  np.testing.assert_allclose(out, REF["ps__out"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(vjp(REF["ps__cotangent"].astype(np.float32))[0],
                             REF["ps__grad_maps"], rtol=1e-5, atol=1e-6)


def test_point_sample_formula():
  """Pixel centres return the pixel; a constant map is constant inside and fades at the rim."""
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(1, 4, 6, 2)).astype(np.float32)
  i, j = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
  centres = np.stack([(j + 0.5) / 6, (i + 0.5) / 4], -1).reshape(1, -1, 2)
  np.testing.assert_allclose(jaxloss.point_sample(maps, centres)[0], maps[0].reshape(-1, 2),
                             rtol=1e-6)
  ones = np.ones((1, 4, 6, 1), np.float32)
  pts = np.array([[[0.5, 0.5], [0.0, 0.0], [1.0, 0.5], [-1.0, 0.5]]], np.float32)
  np.testing.assert_allclose(jaxloss.point_sample(ones, pts)[0, :, 0], [1, 0.25, 0.5, 0],
                             atol=1e-6)


def test_uncertain_point_coords_picks_uncertain_points():
  # |logit| is 0 left of x = 0.25 and 10 elsewhere: the importance points land left of it.
  logits = np.where(np.arange(32) < 8, 0.0, 10.0)[None, None, :].repeat(32, 1)
  logits = np.broadcast_to(logits, (3, 32, 32)).astype(np.float32)
  sample = jax.jit(functools.partial(jaxloss.uncertain_point_coords, num_points=200))
  coords = np.asarray(sample(jax.random.key(0), logits))
  assert coords.shape == (3, 200, 2) and coords.min() >= 0 and coords.max() <= 1
  important, random = coords[:, :150], coords[:, 150:]
  assert np.mean(important[..., 0] < 0.27) > 0.9       # 600 draws, ~150 of them left of 0.25
  assert 0.1 < np.mean(random[..., 0] < 0.25) < 0.45    # fresh uniform points
  np.testing.assert_array_equal(coords, sample(jax.random.key(0), logits))
  assert not np.array_equal(coords, sample(jax.random.key(1), logits))
  with pytest.raises(ValueError, match="oversample_ratio >= 1"):
    jaxloss.uncertain_point_coords(jax.random.key(0), logits, num_points=4, oversample_ratio=0.5)


def test_values_gradients_and_matching_match_mask2former():
  args = (*criterion_inputs(), ref("match_point_coords"), ref("loss_point_coords"))
  out, (g_logits, g_masks) = loss_and_grads(*args)
  for ours, theirs, tol in [("cls_loss", "loss_ce", 1e-6), ("mask_loss", "loss_mask", 2e-6),
                            ("dice_loss", "loss_dice", 2e-6), ("loss", "total", 2e-6)]:
    np.testing.assert_allclose(out[ours], ref(theirs), rtol=tol, err_msg=ours)
  assert float(out["num_masks"]) == 4.0
  np.testing.assert_allclose(g_logits, ref("grad_logits"), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_masks, ref("grad_mask_logits"), rtol=1e-5, atol=1e-7)
  cost = np.where(ref("gt_mask")[:, None, :], ref("cost"), 0)
  matching = jaxloss.hungarian_matching(cost, valid=ref("gt_mask"))
  real = ref("gt_mask")
  np.testing.assert_array_equal(np.asarray(matching.query_index)[real], ref("matched_query")[real])


def test_padding_never_changes_the_loss():
  logits, masks, gt_masks, gt_labels, gt_mask = criterion_inputs()
  points = ref("loss_point_coords")
  b, m = gt_mask.shape
  order = np.array([[4, 0, 3, 1, 2], [2, 3, 1, 4, 0]])            # 2 extra rows, shuffled
  pad = lambda x, fill: np.concatenate([x, np.full((b, 2) + x.shape[2:], fill, x.dtype)], 1)
  take = lambda x: np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  padded = (take(pad(np.where(gt_mask[..., None, None], gt_masks, np.nan), np.inf)),
            take(pad(gt_labels, 77)), take(pad(gt_mask, False)))
  with jax.debug_nans(True):
    out, grads = loss_and_grads(logits, masks, *padded, ref("match_point_coords"),
                                take(pad(points, 0.5)))
  want, want_grads = loss_and_grads(logits, masks, gt_masks, gt_labels, gt_mask,
                                    ref("match_point_coords"), points)
  for k in want:
    np.testing.assert_allclose(out[k], want[k], rtol=1e-6, err_msg=k)
  for g, w in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)


def test_key_draws_no_real_targets_hostile_inputs_and_one_trace():
  logits, masks, gt_masks, gt_labels, gt_mask = criterion_inputs()
  fn, counter = jit_counting(functools.partial(jaxloss.mask2former_loss, num_classes=NUM_CLASSES,
                                               num_points=P))
  key = jax.random.key(3)
  out = fn(logits, masks, gt_masks, gt_labels, gt_mask, key=key)
  assert_finite(out)
  np.testing.assert_allclose(out["loss"], ref("total"), rtol=0.2)       # other points, same loss
  hostile = np.where(np.arange(masks.shape[-1]) % 2, 1e4, -1e4).astype(np.float32)
  hostile = np.broadcast_to(hostile, masks.shape)
  empty = np.zeros_like(gt_masks)
  bf16 = fn(jnp.asarray(logits * 1e4, jnp.bfloat16), jnp.asarray(hostile, jnp.bfloat16), empty,
            gt_labels, gt_mask, key=key)
  assert all(v.dtype == jnp.float32 for v in bf16.values())
  assert_finite(bf16)
  for n in range(gt_mask.shape[1] + 1):
    fn(logits, masks, gt_masks, gt_labels, np.arange(gt_mask.shape[1]) < np.array([[n], [0]]),
       key=key)
  assert counter.count == 2

  def masks_grad(mask):
    return jax.grad(lambda mk: fn(logits, mk, gt_masks, gt_labels, mask, key=key)["loss"])(masks)

  none = fn(logits, masks, gt_masks, gt_labels, np.zeros_like(gt_mask), key=key)
  assert float(none["mask_loss"]) == 0.0 and float(none["dice_loss"]) == 0.0
  assert not np.any(np.asarray(masks_grad(np.zeros_like(gt_mask))))
  assert_finite(jax.grad(lambda mk: fn(logits, mk, empty, gt_labels, gt_mask, key=key)["loss"])(
      hostile))


def test_shard_map_equals_the_whole_batch(devices):
  rng = np.random.default_rng(1)
  b, q, m = len(devices), 4, 3
  logits = rng.normal(0, 2, (b, q, NUM_CLASSES + 1)).astype(np.float32)
  masks = rng.normal(0, 3, (b, q, 6, 6)).astype(np.float32)
  gt_masks = (rng.uniform(size=(b, m, 12, 12)) < 0.4).astype(np.float32)
  gt_labels = rng.integers(0, NUM_CLASSES, (b, m))
  # At least one mask per image: a mean count below 1 per device is clamped to 1 (as Mask2Former).
  gt_mask = np.arange(m) < rng.integers(1, m + 1, b)[:, None]
  match = rng.uniform(size=(b, P, 2)).astype(np.float32)
  points = rng.uniform(size=(b, m, P, 2)).astype(np.float32)
  whole, whole_grads = loss_and_grads(logits, masks, gt_masks, gt_labels, gt_mask, match, points)

  def per_device(*args):
    out, grads = loss_and_grads(*args, axis_name="d")
    return jax.tree.map(lambda x: jax.lax.pmean(x, "d"), out), grads

  spec = PartitionSpec("d")
  out, grads = jax.jit(jax.shard_map(per_device, mesh=Mesh(np.array(devices), ("d",)),
                                     in_specs=(spec,) * 7, out_specs=(PartitionSpec(), spec)))(
      logits, masks, gt_masks, gt_labels, gt_mask, match, points)
  for key in ("loss", "cls_loss", "mask_loss", "dice_loss"):
    np.testing.assert_allclose(out[key], whole[key], rtol=1e-5, err_msg=key)
  for g, w in zip(grads, whole_grads, strict=True):
    np.testing.assert_allclose(g, w * b, rtol=1e-4, atol=1e-6)


def test_errors():
  logits, masks, gt_masks, gt_labels, gt_mask = criterion_inputs()
  call = functools.partial(jaxloss.mask2former_loss, num_classes=NUM_CLASSES, num_points=P)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="needs `key`"):
    call(logits, masks, gt_masks, gt_labels, gt_mask)
  with pytest.raises(ValueError, match=r"num_classes \+ 1"):
    call(logits[..., :-1], masks, gt_masks, gt_labels, gt_mask, key=key)
  with pytest.raises(ValueError, match="`mask_logits` must be"):
    call(logits, masks[:, :3], gt_masks, gt_labels, gt_mask, key=key)
  with pytest.raises(TypeError, match="`gt_mask` must be boolean"):
    call(logits, masks, gt_masks, gt_labels, gt_mask.astype(np.int32), key=key)
  with pytest.raises(ValueError, match=r"point_sample takes"):
    jaxloss.point_sample(masks, np.zeros((3, 5, 2)))
