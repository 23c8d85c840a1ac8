"""The one reduction helper: weight, where, reduction, avg_factor, axis_name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxloss import reduce_loss
from jaxloss._src import checks
from jaxloss._src import reduce as reduce_src
from tests.utils import assert_finite

LOSS = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize("reduction,expected", [("sum", 21.0), ("mean", 3.5)])
def test_plain_reductions(reduction, expected):
  assert reduce_loss(LOSS, reduction=reduction) == pytest.approx(expected)
  np.testing.assert_array_equal(reduce_loss(LOSS, reduction="none"), LOSS)


def test_weight_one_rank_short_is_per_sample():
  w = np.array([1.0, 10.0], np.float32)
  out = reduce_loss(LOSS, weight=w, reduction="none")
  np.testing.assert_allclose(out, LOSS * w[:, None])
  # numpy broadcasting for a same-rank weight
  out = reduce_loss(LOSS, weight=np.array([[1.0, 0.0, 2.0]]), reduction="none")
  np.testing.assert_allclose(out, LOSS * np.array([[1.0, 0.0, 2.0]]))


def test_where_excludes_from_value_and_count():
  where = np.array([[True, False, True], [False, False, True]])
  assert reduce_loss(LOSS, where=where) == pytest.approx((1 + 3 + 6) / 3)
  assert reduce_loss(LOSS, where=where, reduction="sum") == pytest.approx(10.0)
  per_sample = np.array([True, False])
  assert reduce_loss(LOSS, where=per_sample) == pytest.approx(2.0)


def test_avg_factor_and_count_weight():
  assert reduce_loss(LOSS, avg_factor=7.0) == pytest.approx(3.0)
  assert reduce_loss(LOSS, avg_factor=0.0) == 0.0
  cw = np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
  assert reduce_loss(LOSS, count_weight=cw) == pytest.approx(21.0 / 4.0)


def test_errors_at_trace_time():
  with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
    jax.jit(lambda x: reduce_loss(x, reduction="avg"))(LOSS)
  with pytest.raises(ValueError, match="avg_factor"):
    reduce_loss(LOSS, reduction="sum", avg_factor=2.0)
  with pytest.raises(ValueError, match="does not broadcast"):
    reduce_loss(LOSS, weight=np.ones(4))
  with pytest.raises(TypeError, match="boolean"):
    reduce_loss(LOSS, where=np.ones((2, 3)))


def test_all_masked_mean_is_zero_with_zero_grad():
  where = np.zeros((2, 3), bool)
  value, grad = jax.value_and_grad(lambda x: reduce_loss(x, where=where))(jnp.asarray(LOSS))
  assert value == 0.0
  np.testing.assert_array_equal(grad, 0.0)
  value, grad = jax.value_and_grad(
      lambda x: reduce_loss(x, avg_factor=jnp.sum(x) * 0))(jnp.asarray(LOSS))
  assert value == 0.0
  assert_finite(grad)


def test_double_where_blocks_nan_in_masked_inputs():
  x = jnp.array([4.0, -1.0, jnp.nan])
  where = jnp.array([True, False, False])

  def loss(x):
    mask = reduce_src.broadcast_mask(where, x.shape)
    safe = reduce_src.fill_masked(x, mask, 1.0)
    return reduce_loss(jnp.sqrt(safe), where=mask)

  value, grad = jax.value_and_grad(loss)(x)
  assert value == pytest.approx(2.0)
  np.testing.assert_allclose(grad, [0.25, 0.0, 0.0])


def test_low_precision_returns_float32():
  out = reduce_loss(jnp.asarray(LOSS, jnp.bfloat16))
  assert out.dtype == jnp.float32


def test_axis_name_pmean_equals_whole_batch(devices):
  n = 4
  assert len(devices) >= n
  rng = np.random.default_rng(0)
  loss = rng.uniform(size=(n * 3, 5)).astype(np.float32)
  where = rng.uniform(size=(n * 3, 5)) > 0.3
  where[:3] = False  # one device has nothing counted
  expected = reduce_loss(loss, where=where)
  mesh = Mesh(np.array(devices[:n]), ("data",))

  def per_device(loss, where):
    local = reduce_loss(loss, where=where, axis_name="data")
    return jax.lax.pmean(local, "data")

  out = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                      out_specs=P())(loss, where)
  np.testing.assert_allclose(out, expected, rtol=1e-6)

  avg = 17.0
  def with_avg(loss):
    return jax.lax.pmean(reduce_loss(loss, avg_factor=avg / n, axis_name="data"), "data")
  out = jax.shard_map(with_avg, mesh=mesh, in_specs=P("data"), out_specs=P())(loss)
  np.testing.assert_allclose(out, loss.sum() / avg, rtol=1e-6)


def test_negative_avg_factor_raises_traced_passes():
  loss = jnp.ones(3)
  with pytest.raises(ValueError, match=r"`avg_factor` must be in \[0, inf\)"):
    reduce_loss(loss, avg_factor=-1.0)
  with pytest.raises(ValueError, match="avg_factor"):
    reduce_loss(loss, avg_factor=np.float32(-0.5))
  assert reduce_loss(loss, avg_factor=0.0) == 0.0  # 0 over 0 is 0, as every empty mean
  # a traced avg_factor cannot raise inside jit: it passes unchecked
  np.testing.assert_allclose(jax.jit(lambda a: reduce_loss(loss, avg_factor=a))(-3.0), -1.0)


@pytest.mark.parametrize("kw, message", [
    ({"low": 0.0}, r"`x` must be in \[0, inf\), got -1"),
    ({"low": 0.0, "low_open": True}, r"`x` must be in \(0, inf\), got -1"),
    ({"low": 0.0, "high": 1.0}, r"`x` must be in \[0, 1\], got -1"),
])
def test_check_range_names_the_interval(kw, message):
  with pytest.raises(ValueError, match=message):
    checks.check_range("x", -1, **kw)
  with pytest.raises(ValueError, match="got nan"):
    checks.check_range("x", float("nan"), **kw)
  checks.check_range("x", 0.5, **kw)
  checks.check_range("x", jnp.asarray(-1.0), **kw)  # arrays (maybe traced) are not checked
