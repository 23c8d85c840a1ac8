"""soft_skeleton, cldice_loss and dice_cldice_loss against MONAI 1.6.1 and properties."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.utils import assert_finite, bf16, jit_counting, load_fixture, value_and_grad_finite

F = load_fixture("monai_cldice.npz")
RTOL, ATOL = 2e-5, 1e-6

# (fixture key, logits key, target key, function, keywords)
CASES = [
    ("cl2", "logits2", "labels2", jaxloss.cldice_loss, {}),
    ("cl2_none", "logits2", "labels2", jaxloss.cldice_loss, dict(reduction="none")),
    ("cl2_nobg_it5", "logits2", "labels2", jaxloss.cldice_loss,
     dict(include_background=False, iters=5, smooth=0.5, eps=1e-3)),
    ("cl2_it0_sum", "logits2", "labels2", jaxloss.cldice_loss, dict(iters=0, reduction="sum")),
    ("cl3", "logits3", "labels3", jaxloss.cldice_loss, {}),
    ("clb", "logitsb", "targetb", jaxloss.cldice_loss, dict(activation="sigmoid")),
    ("dcl2", "logits2", "labels2", jaxloss.dice_cldice_loss, {}),
    ("dcl2_a03_nobg", "logits2", "labels2", jaxloss.dice_cldice_loss,
     dict(alpha=0.3, include_background=False, smooth=0.5)),
    ("dclb", "logitsb", "targetb", jaxloss.dice_cldice_loss,
     dict(activation="sigmoid", alpha=0.7)),
]


@pytest.mark.parametrize("key,xk,yk,fn,kw", CASES, ids=[c[0] for c in CASES])
def test_matches_monai_value_and_grad(key, xk, yk, fn, kw):
  x, y = jnp.asarray(F[xk], jnp.float32), jnp.asarray(F[yk])
  loss = functools.partial(fn, **kw)
  np.testing.assert_allclose(loss(x, y), F[f"{key}_value"], rtol=RTOL, atol=ATOL)
  if f"{key}_grad" in F:
    np.testing.assert_allclose(jax.grad(loss)(x, y), F[f"{key}_grad"], rtol=1e-4, atol=1e-6)


def test_monai_sum_of_dice_cldice_counts_dice_per_class():
  x, y = jnp.asarray(F["logits3"], jnp.float32), jnp.asarray(F["labels3"])
  dice = jaxloss.dice_loss(x, y, per_image=True, reduction="sum")
  cl = jaxloss.cldice_loss(x, y, reduction="sum")
  np.testing.assert_allclose(0.5 * dice + 0.5 * cl, F["dcl3_sum_value"], rtol=RTOL)


def test_soft_skeleton_matches_monai():
  np.testing.assert_allclose(jaxloss.soft_skeleton(jnp.asarray(F["skel_in"], jnp.float32)),
                             F["skel_out"], rtol=1e-5, atol=1e-6)


def test_skeleton_of_a_thick_bar_is_thin_and_inside():
  bar = np.zeros((1, 15, 21, 1), np.float32)
  bar[0, 4:11, 2:19] = 1
  skel = np.asarray(jaxloss.soft_skeleton(jnp.asarray(bar), iters=5))
  assert np.all(skel[bar == 0] == 0)
  assert skel.sum() > 0
  assert skel.sum() < 0.3 * bar.sum()
  # Thin across the bar: at most 2 rows in each interior column.
  assert np.all((skel[0, :, 5:16, 0] > 0.5).sum(axis=0) <= 2)


def test_broken_line_scores_worse_than_intact_line_of_equal_dice():
  target = np.zeros((1, 16, 16), np.int32)
  target[0, 8, 1:15] = 1
  thick = np.zeros((1, 16, 16, 1), np.float32)
  thick[0, 7:10, 1:15] = 1  # a thick intact band covering the line
  broken = np.zeros((1, 16, 16, 1), np.float32)
  broken[0, 8, 1:15] = 1
  broken[0, 8, 7:9] = 0  # the line itself, cut in the middle
  # Equal dice to within a pixel, so that dice cannot tell them apart much.
  one_hot = lambda p: jnp.concatenate([1 - p, p], -1)
  dice = lambda p: float(jaxloss.dice_loss(one_hot(p), target, activation=None, smooth=0))
  cl = lambda p: float(jaxloss.cldice_loss(one_hot(p), target, activation=None,
                                           include_background=False, iters=3))
  assert cl(jnp.asarray(broken)) > cl(jnp.asarray(thick)) + 0.01
  assert dice(jnp.asarray(broken)) < dice(jnp.asarray(thick))


@pytest.mark.parametrize("fn", [jaxloss.cldice_loss, jaxloss.dice_cldice_loss])
def test_transforms_reductions_and_masks(fn):
  x, y = jnp.asarray(F["logits2"], jnp.float32), jnp.asarray(F["labels2"])
  per_image = fn(x, y, reduction="none")
  assert per_image.shape == (2,)
  np.testing.assert_allclose(fn(x, y, reduction="sum"), per_image.sum(), rtol=1e-6)
  np.testing.assert_allclose(fn(x, y, weight=jnp.array([2.0, 0.0]), reduction="sum"),
                             2 * per_image[0], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(fn)(x, y), per_image.mean(), rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda a, b: fn(a[None], b[None]))(x, y), per_image,
                             rtol=1e-5)
  # ignore_index and where remove pixels alike; their logits get no gradient, even NaN.
  ignored = y.at[:, :3].set(255)
  by_index = fn(x, ignored, ignore_index=255)
  np.testing.assert_allclose(fn(x, y, where=ignored != 255), by_index, rtol=1e-6)
  nan_x = x.at[:, :3].set(jnp.nan)
  value, grad = jax.value_and_grad(lambda a: fn(a, ignored, ignore_index=255))(nan_x)
  np.testing.assert_allclose(value, by_index, rtol=1e-6)
  assert_finite(grad)
  assert np.all(np.asarray(grad)[:, :3] == 0)


def test_shard_map_pmean_equals_the_whole_batch(devices):
  x = jnp.asarray(F["logits2"], jnp.float32)
  y = jnp.asarray(F["labels2"])
  mesh = jax.sharding.Mesh(np.array(devices[:2]), ("d",))

  def local(a, b):
    return jax.lax.pmean(jaxloss.cldice_loss(a, b, iters=1, axis_name="d"), "d")

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P())
  np.testing.assert_allclose(sharded(x, y), jaxloss.cldice_loss(x, y, iters=1), rtol=1e-5)


@pytest.mark.parametrize("fn", [jaxloss.cldice_loss, jaxloss.dice_cldice_loss])
def test_hostile_inputs_are_finite(fn):
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.integers(0, 3, (2, 8, 8)), jnp.uint8)
  x = jnp.asarray(rng.choice([-1e4, 1e4], (2, 8, 8, 3)), jnp.float32)
  with jax.debug_nans(True):
    value_and_grad_finite(lambda a: fn(a, y), x)
    value_and_grad_finite(lambda a: fn(a, jnp.zeros_like(y)), x)  # empty foreground
    value_and_grad_finite(lambda a: fn(a, y, where=jnp.zeros(y.shape, bool)), x)
    value_and_grad_finite(lambda a: fn(a, jnp.full(y.shape, 255, jnp.int32), ignore_index=255), x)
  out = fn(bf16(x), y)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(fn(x, y.astype(jnp.int8)), fn(x, y), rtol=1e-6)


def test_one_compilation_for_new_values():
  fn, counter = jit_counting(jaxloss.cldice_loss)
  x = jnp.asarray(F["logits2"], jnp.float32)
  fn(x, jnp.asarray(F["labels2"]))
  fn(x + 1, jnp.asarray(F["labels2"]) * 0)
  assert counter.count == 1


@pytest.mark.parametrize("kw,err,match", [
    (dict(iters=2.0), TypeError, "iters"),
    (dict(iters=-1), ValueError, "iters"),
    (dict(smooth=0.0), ValueError, "smooth"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(activation="relu"), ValueError, "activation"),
    (dict(reduction="avg"), ValueError, "reduction"),
])
def test_bad_arguments_raise(kw, err, match):
  x, y = jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4), jnp.int32)
  with pytest.raises(err, match=match):
    jaxloss.cldice_loss(x, y, **kw)
  with pytest.raises(ValueError, match="alpha"):
    jaxloss.dice_cldice_loss(x, y, alpha=1.5)
  with pytest.raises(ValueError, match="spatial"):
    jaxloss.soft_skeleton(jnp.zeros((2, 3)))
