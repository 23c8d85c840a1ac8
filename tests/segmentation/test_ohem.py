"""ohem_cross_entropy against a float64 numpy transcription of mmsegmentation's OHEMPixelSampler.

The reference follows the sampler's published semantics (mmseg/structures/sampler/
ohem_pixel_sampler.py): boolean indexing and a sort over the valid pixels, which the jaxloss
version replaces by static-shape masks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.utils import bf16, jit_counting, value_and_grad_finite

IGNORE = 255


def np_ohem(logits, labels, thresh, min_kept, ignore=IGNORE):
  """(per-pixel CE on kept pixels, kept mask, valid mask), float64, mmseg's sampler."""
  x = logits.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  valid = labels != ignore
  safe = np.where(valid, labels, 0)
  ce = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
  prob = np.exp(-ce)
  batch_kept = min_kept * labels.shape[0]
  kept_valid = np.zeros(valid.sum(), bool)
  if thresh is not None:
    sort_prob = np.sort(prob[valid])
    floor = sort_prob[min(batch_kept, sort_prob.size - 1)] if sort_prob.size else 0.0
    kept_valid[prob[valid] < max(floor, thresh)] = True
  else:
    order = np.argsort(-ce[valid], kind="stable")
    kept_valid[order[:batch_kept]] = True
  kept = np.zeros(labels.shape, bool)
  kept[valid] = kept_valid
  return np.where(kept, ce, 0.0), kept, valid, logp


def _inputs(seed=0, shape=(2, 7, 9, 4)):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=shape) * 2).astype(np.float32)
  labels = rng.integers(0, shape[-1], shape[:-1])
  labels[0, :2] = IGNORE
  return logits, labels


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 5), (0.7, 60), (0.3, 1), (0.99, 200),
                                             (None, 10), (None, 1000)])
def test_matches_mmseg_sampler_value_and_grad(thresh, min_kept):
  logits, labels = _inputs()
  per, kept, valid, logp = np_ohem(logits, labels, thresh, min_kept)
  fn = lambda x: jaxloss.ohem_cross_entropy(x, labels, thresh=thresh, min_kept=min_kept,
                                            ignore_index=IGNORE)
  np.testing.assert_allclose(
      jaxloss.ohem_cross_entropy(logits, labels, thresh=thresh, min_kept=min_kept,
                                 ignore_index=IGNORE, reduction="none"), per, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fn(logits), per.sum() / valid.sum(), rtol=1e-5)
  onehot = np.eye(logits.shape[-1])[np.where(valid, labels, 0)]
  grad = (np.exp(logp) - onehot) * kept[..., None] / valid.sum()
  np.testing.assert_allclose(jax.grad(fn)(logits), grad, rtol=1e-4, atol=1e-7)
  # mmseg's default avg_non_ignore=False divides by every pixel; PaddleSeg by the kept ones.
  np.testing.assert_allclose(
      jaxloss.ohem_cross_entropy(logits, labels, thresh=thresh, min_kept=min_kept,
                                 ignore_index=IGNORE, avg_factor=labels.size),
      per.sum() / labels.size, rtol=1e-5)


def test_threshold_and_min_kept_select_as_documented():
  logits, labels = _inputs(1)
  _, kept_small, valid, _ = np_ohem(logits, labels, 0.7, 1)
  none = lambda **kw: np.asarray(jaxloss.ohem_cross_entropy(
      logits, labels, ignore_index=IGNORE, reduction="none", **kw)) > 0
  assert np.array_equal(none(thresh=0.7, min_kept=1), kept_small)
  # A large min_kept keeps (almost) every valid pixel whatever the threshold.
  assert none(thresh=0.0, min_kept=10 ** 6).sum() >= valid.sum() - 1
  assert none(thresh=None, min_kept=3).sum() == 6


def test_ignored_rows_nan_logits_all_ignored_and_hostile_inputs():
  logits, labels = _inputs(2)
  bad = np.where((labels == IGNORE)[..., None], np.nan, logits)
  fn = lambda x, y: jaxloss.ohem_cross_entropy(x, y, min_kept=4, ignore_index=IGNORE)
  value, grad = value_and_grad_finite(fn, jnp.asarray(bad), labels)
  np.testing.assert_allclose(value, fn(logits, labels), rtol=1e-6)
  assert np.all(np.asarray(grad)[labels == IGNORE] == 0)
  with jax.debug_nans(True):
    value, _ = value_and_grad_finite(fn, jnp.asarray(logits), np.full(labels.shape, IGNORE))
    assert value == 0
    value_and_grad_finite(fn, jnp.asarray(np.sign(logits) * 1e4), labels)
  assert jaxloss.ohem_cross_entropy(bf16(logits), labels).dtype == jnp.float32
  np.testing.assert_allclose(fn(logits, labels.astype(np.uint8)), fn(logits, labels), rtol=1e-6)


def test_jit_once_and_shard_map(devices):
  logits, labels = _inputs(3)
  labels = np.where(labels == IGNORE, 0, labels)
  jitted, counter = jit_counting(
      lambda x, y: jaxloss.ohem_cross_entropy(x, y, min_kept=5, axis_name=None))
  jitted(logits, labels)
  jitted(logits * 2, labels[::-1])
  assert counter.count == 1
  mesh = jax.sharding.Mesh(np.array(devices[:2]), ("d",))
  local = lambda x, y: jax.lax.psum(jaxloss.ohem_cross_entropy(
      x, y, min_kept=5, reduction="sum"), "d") / jax.lax.psum(jnp.asarray(y.size, jnp.float32), "d")
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P())
  one_image = jax.jit(lambda x, y: jaxloss.ohem_cross_entropy(x, y, min_kept=5, reduction="sum"))
  per_device = [one_image(logits[i:i + 1], labels[i:i + 1]) for i in range(2)]
  np.testing.assert_allclose(sharded(logits, labels), sum(per_device) / labels.size, rtol=1e-5)
  mean = jax.shard_map(lambda x, y: jax.lax.pmean(jaxloss.ohem_cross_entropy(
      x, y, min_kept=5, axis_name="d"), "d"), mesh=mesh, in_specs=(P("d"), P("d")),
      out_specs=P())
  np.testing.assert_allclose(mean(logits, labels), sum(per_device) / labels.size, rtol=1e-5)


@pytest.mark.parametrize("kw,err,match", [
    (dict(min_kept=2.5), TypeError, "min_kept"),
    (dict(min_kept=0), ValueError, "min_kept"),
    (dict(thresh=1.5), ValueError, "thresh"),
    (dict(reduction="avg"), ValueError, "reduction"),
])
def test_bad_arguments_raise(kw, err, match):
  with pytest.raises(err, match=match):
    jaxloss.ohem_cross_entropy(jnp.zeros((1, 3, 3, 2)), jnp.zeros((1, 3, 3), jnp.int32), **kw)
  with pytest.raises(ValueError, match="labels"):
    jaxloss.ohem_cross_entropy(jnp.zeros((1, 3, 3, 2)), jnp.zeros((1, 3), jnp.int32))
