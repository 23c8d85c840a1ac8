"""hungarian_matching: exact totals (scipy fixture, brute force), padding, tracing, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxloss
from tests.utils import jit_counting, load_fixture

SCIPY = load_fixture("scipy_matching.npz")
CASES = sorted({k.split("__")[0] for k in SCIPY})
MATCH = jax.jit(jaxloss.hungarian_matching)


def brute_total(cost):
  """Least total cost over every injective map of the columns into the rows (float64)."""
  cost = np.asarray(cost, np.float64)
  q, m = cost.shape
  return min((cost[list(p), range(m)].sum() for p in itertools.permutations(range(q), m)),
             default=0.0)


def total(cost, query_index, valid):
  cost, qi, valid = np.asarray(cost, np.float64), np.asarray(query_index), np.asarray(valid)
  return cost[qi, np.arange(cost.shape[-1])][valid].sum()


def assert_consistent(matching, q):
  """Real targets have distinct queries, and target_index is the inverse map."""
  qi, ti, valid = (np.asarray(x) for x in matching)
  real = np.flatnonzero(valid)
  assert len(set(qi[real])) == len(real)
  assert np.all((qi >= 0) & (qi < q)) and np.all(qi[~valid] == 0)
  assert np.array_equal(ti[qi[real]], real)
  assert np.sum(ti >= 0) == len(real)
  assert qi.dtype == np.int32 and ti.dtype == np.int32


def pad(cost, rng, extra, fill):
  """Scatters the real columns of ``cost`` among ``extra`` padded columns holding ``fill``."""
  q, m = cost.shape
  where = np.sort(rng.choice(m + extra, m, replace=False))
  padded = np.full((q, m + extra), fill, np.float32)
  padded[:, where] = cost
  valid = np.zeros(m + extra, bool)
  valid[where] = True
  return padded, valid, where


@pytest.mark.parametrize("name", CASES)
def test_total_equals_scipy(name):
  cost = SCIPY[f"{name}__cost"]
  matching = MATCH(cost)
  assert_consistent(matching, cost.shape[0])
  np.testing.assert_allclose(total(cost, matching.query_index, matching.valid),
                             SCIPY[f"{name}__total"], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("fill", [0.0, 1e9, np.nan, np.inf, -np.inf])
def test_padding_never_changes_the_matching(fill):
  rng = np.random.default_rng(1)
  cost = SCIPY["detr_like__cost"]
  padded, valid, where = pad(cost, rng, 70 - cost.shape[1], fill)
  ref = MATCH(cost)
  got = MATCH(padded, valid=valid)
  assert_consistent(got, cost.shape[0])
  np.testing.assert_array_equal(np.asarray(got.query_index)[where], ref.query_index)
  np.testing.assert_array_equal(got.valid, valid)


@pytest.mark.parametrize("seed", range(4))
def test_brute_force_ties_and_rectangles(seed):
  rng = np.random.default_rng(seed)
  for q, m in [(5, 5), (6, 3), (4, 1), (6, 6)]:
    cost = rng.integers(-2, 3, size=(q, m)).astype(np.float32) if seed % 2 else \
        rng.normal(size=(q, m)).astype(np.float32)
    matching = MATCH(cost)
    assert_consistent(matching, q)
    np.testing.assert_allclose(total(cost, *matching[::2]), brute_total(cost), atol=1e-5)


def test_non_finite_real_costs_count_as_the_largest_finite():
  rng = np.random.default_rng(2)
  cost = rng.uniform(size=(6, 5)).astype(np.float32)
  cost[0, 0], cost[1, 1], cost[2, 2], cost[3, 1] = np.nan, np.inf, -np.inf, np.nan
  replaced = np.where(np.isfinite(cost), cost, np.nanmax(np.where(np.isfinite(cost), cost, 0)))
  with jax.debug_nans(True):
    matching = MATCH(cost)
  assert_consistent(matching, 6)
  np.testing.assert_allclose(total(replaced, *matching[::2]), brute_total(replaced), atol=1e-6)
  everything_bad = MATCH(np.full((4, 3), np.nan, np.float32))
  assert_consistent(everything_bad, 4)


def test_no_and_all_real_targets():
  cost = SCIPY["rect_float__cost"]
  none = MATCH(cost, valid=np.zeros(cost.shape[1], bool))
  assert_consistent(none, cost.shape[0])
  assert np.all(np.asarray(none.target_index) == -1)
  assert np.all(np.asarray(none.query_index) == 0)
  full = MATCH(cost, valid=np.ones(cost.shape[1], bool))
  np.testing.assert_array_equal(full.query_index, MATCH(cost).query_index)
  empty = jaxloss.hungarian_matching(np.zeros((3, 0), np.float32))
  assert empty.query_index.shape == (0,) and np.all(np.asarray(empty.target_index) == -1)


def test_batch_axes_vmap_and_one_trace_for_any_number_of_real_targets():
  rng = np.random.default_rng(3)
  b, q, m = 5, 7, 5
  cost = rng.normal(size=(2, b, q, m)).astype(np.float32)
  valid = np.arange(m) < np.arange(b)[:, None]        # 0..4 real targets
  fn, counter = jit_counting(jaxloss.hungarian_matching)
  batched = fn(cost, valid=np.broadcast_to(valid, (2, b, m)))
  mapped = jax.vmap(jax.vmap(lambda c, v: jaxloss.hungarian_matching(c, valid=v)))(
      cost, np.broadcast_to(valid, (2, b, m)))
  for x, y in zip(batched, mapped, strict=True):
    np.testing.assert_array_equal(x, y)
  for i in range(b):
    one = fn(cost[0, i], valid=valid[i])
    real = valid[i]
    assert_consistent(one, q)
    np.testing.assert_allclose(total(cost[0, i], *one[::2]), brute_total(cost[0, i][:, real]),
                               atol=1e-5)
  assert counter.count == 2   # one [2, B, Q, M] program, one [Q, M] program


def test_shard_map(devices):
  rng = np.random.default_rng(4)
  cost = rng.normal(size=(len(devices), 6, 4)).astype(np.float32)
  valid = np.arange(4) < rng.integers(0, 5, len(devices))[:, None]
  mesh = jax.sharding.Mesh(np.array(devices), ("d",))
  spec = jax.sharding.PartitionSpec("d")
  sharded = jax.jit(jax.shard_map(lambda c, v: tuple(jaxloss.hungarian_matching(c, valid=v)),
                                  mesh=mesh, in_specs=(spec, spec), out_specs=spec))
  for x, y in zip(sharded(cost, valid), MATCH(cost, valid=valid), strict=True):
    np.testing.assert_array_equal(x, y)


def test_no_gradient_through_the_matching():
  cost = jnp.asarray(SCIPY["square_float__cost"])

  def matched_cost(c):
    m = jaxloss.hungarian_matching(c)
    return jnp.sum(c[m.query_index, jnp.arange(c.shape[1])])

  grad = jax.grad(matched_cost)(cost)
  qi = np.asarray(MATCH(cost).query_index)
  expected = np.zeros(cost.shape, np.float32)
  expected[qi, np.arange(cost.shape[1])] = 1
  np.testing.assert_array_equal(grad, expected)


def test_low_precision_costs():
  cost = SCIPY["rect_float__cost"]
  matching = MATCH(jnp.asarray(cost, jnp.bfloat16))
  rounded = np.asarray(jnp.asarray(cost, jnp.bfloat16), np.float32)
  assert_consistent(matching, cost.shape[0])
  best = MATCH(rounded)
  np.testing.assert_allclose(total(rounded, *matching[::2]), total(rounded, *best[::2]),
                             atol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match="fewer queries than targets"):
    jaxloss.hungarian_matching(np.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"\[..., Q, M\]"):
    jaxloss.hungarian_matching(np.zeros(3))
  with pytest.raises(TypeError, match="`valid` must be a boolean"):
    jaxloss.hungarian_matching(np.zeros((4, 3)), valid=np.ones(3, np.int32))
  with pytest.raises(ValueError, match="`valid` of shape"):
    jaxloss.hungarian_matching(np.zeros((4, 3)), valid=np.ones(4, bool))


@given(st.sampled_from([3, 6]), st.integers(0, 2**31 - 1), st.booleans())
def test_property_optimal_and_consistent(q, seed, integer):
  # Two shapes (two compilations); the real count and the padding vary.
  m = q
  rng = np.random.default_rng(seed)
  cost = (rng.integers(0, 3, size=(q, m)) if integer else rng.normal(size=(q, m)) * 10)
  cost = cost.astype(np.float32)
  valid = rng.uniform(size=m) < rng.uniform()
  cost[:, ~valid] = rng.choice([0.0, np.nan, np.inf, -1e9], size=(q, int((~valid).sum())))
  matching = MATCH(cost, valid=valid)
  assert_consistent(matching, q)
  np.testing.assert_allclose(total(cost, *matching[::2]), brute_total(cost[:, valid]),
                             rtol=1e-6, atol=1e-4)


def test_unknown_method():
  with pytest.raises(ValueError, match="method must be one of"):
    jaxloss.hungarian_matching(np.zeros((3, 2)), method="scipy")


def test_host_method_equals_jit():
  pytest.importorskip("scipy")
  rng = np.random.default_rng(5)
  cost = rng.uniform(size=(2, 3, 7, 4)).astype(np.float32)
  cost[0, 0, 2, 1] = np.nan                         # a real non-finite cost
  valid = rng.uniform(size=(2, 3, 4)) < 0.7
  cost = np.where(valid[..., None, :], cost, np.inf)  # padding holds anything
  host = jax.jit(lambda c, v: jaxloss.hungarian_matching(c, valid=v, method="host"))
  jit = jax.jit(lambda c, v: jaxloss.hungarian_matching(c, valid=v))
  ours, theirs = host(cost, valid), jit(cost, valid)
  for b in np.ndindex(valid.shape[:-1]):
    assert_consistent(jax.tree.map(lambda x, b=b: x[b], ours), cost.shape[-2])
    real = cost[b][:, valid[b]]                     # as scipy sees it: NaN -> largest finite
    real = np.where(np.isfinite(real), real, np.max(real[np.isfinite(real)], initial=0))
    every = np.ones(real.shape[1], bool)
    np.testing.assert_allclose(total(real, ours.query_index[b][valid[b]], every),
                               total(real, theirs.query_index[b][valid[b]], every), rtol=1e-6)
  # vmapped: one callback over the batch, same answer.
  vmapped = jax.jit(jax.vmap(lambda c, v: jaxloss.hungarian_matching(c, valid=v, method="host")))
  np.testing.assert_array_equal(vmapped(cost, valid).query_index, ours.query_index)
  empty = jaxloss.hungarian_matching(cost[0, 0], valid=np.zeros(4, bool), method="host")
  assert np.all(np.asarray(empty.target_index) == -1)
