"""Regression losses against numpy formulas, torch's smooth L1 semantics and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
from tests.utils import assert_finite, bf16

RNG = np.random.default_rng(1)
PRED = RNG.normal(size=(4, 6)).astype(np.float32) * 2
TARGET = RNG.normal(size=(4, 6)).astype(np.float32)


def np_smooth_l1(d, beta):
  ad = np.abs(d)
  return np.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)


def np_balanced_l1(d, alpha, gamma, beta):
  """mmdetection's ``balanced_l1_loss`` (its first factor is b*d + 1, without /beta)."""
  ad = np.abs(d)
  b = np.exp(gamma / alpha) - 1
  return np.where(
      ad < beta,
      alpha / b * (b * ad + 1) * np.log(b * ad / beta + 1) - alpha * ad,
      gamma * ad + gamma / b - alpha * beta)


def np_balanced_l1_grad(d, alpha, gamma, beta):
  """d loss / d pred of :func:`np_balanced_l1`, differentiated by hand."""
  ad = np.abs(d)
  b = np.exp(gamma / alpha) - 1
  inner = alpha * np.log(b * ad / beta + 1) + alpha / beta * (b * ad + 1) / (b * ad / beta + 1)
  return np.sign(d) * np.where(ad < beta, inner - alpha, gamma)


REFERENCES = {
    "l1_loss": (jaxloss.l1_loss, {}, lambda d: np.abs(d)),
    "mse_loss": (jaxloss.mse_loss, {}, lambda d: d * d),
    "smooth_l1_loss": (jaxloss.smooth_l1_loss, {"beta": 0.5}, lambda d: np_smooth_l1(d, 0.5)),
    "balanced_l1_loss": (jaxloss.balanced_l1_loss, {"alpha": 0.5, "gamma": 1.5, "beta": 1.0},
                         lambda d: np_balanced_l1(d, 0.5, 1.5, 1.0)),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_against_numpy_formula(name):
  fn, kw, ref = REFERENCES[name]
  expected = ref((PRED - TARGET).astype(np.float64))
  np.testing.assert_allclose(fn(PRED, TARGET, reduction="none", **kw), expected, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(fn(PRED, TARGET, reduction="sum", **kw), expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(fn(PRED, TARGET, **kw), expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_where_equals_subset_and_blocks_nan(name):
  fn, kw, ref = REFERENCES[name]
  where = RNG.uniform(size=PRED.shape) > 0.4
  pred = np.where(where, PRED, np.nan).astype(np.float32)
  expected = ref((PRED - TARGET).astype(np.float64))[where].mean()
  value, grad = jax.value_and_grad(lambda p: fn(p, TARGET, where=where, **kw))(pred)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert_finite(grad)
  np.testing.assert_array_equal(np.asarray(grad)[~where], 0.0)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_transforms_and_dtypes(name):
  fn, kw, _ = REFERENCES[name]
  loss = lambda p, t: fn(p, t, **kw)
  np.testing.assert_allclose(jax.jit(loss)(PRED, TARGET), loss(PRED, TARGET), rtol=1e-6)
  per_row = jax.vmap(loss)(PRED, TARGET)
  rows = [loss(p, t) for p, t in zip(PRED, TARGET, strict=True)]
  np.testing.assert_allclose(per_row, rows, rtol=1e-6)
  out = fn(bf16(PRED), bf16(TARGET), **kw)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, loss(PRED, TARGET), rtol=2e-2)
  assert_finite(jax.grad(loss)(PRED * 1e4, TARGET))
  assert fn(PRED, TARGET, where=np.zeros(PRED.shape, bool), **kw) == 0.0


@pytest.mark.parametrize("name", ["mse_loss", "smooth_l1_loss", "balanced_l1_loss"])
def test_check_grads(name):
  fn, kw, _ = REFERENCES[name]
  # keep |d| away from the kinks at 0 and beta
  pred = TARGET + np.sign(PRED - TARGET) * np.linspace(0.1, 0.4, PRED.size).reshape(PRED.shape)
  check_grads(lambda p: fn(p, TARGET, **kw), (pred.astype(np.float64),), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)


def test_smooth_l1_equals_scaled_optax_huber():
  beta = 0.7
  ours = jaxloss.smooth_l1_loss(PRED, TARGET, beta=beta, reduction="none")
  np.testing.assert_allclose(ours, optax.huber_loss(PRED, TARGET, delta=beta) / beta, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(jaxloss.smooth_l1_loss(PRED, TARGET, beta=0.0, reduction="none"),
                             np.abs(PRED - TARGET), rtol=1e-6)
  np.testing.assert_allclose(jaxloss.mse_loss(PRED, TARGET, reduction="none"),
                             optax.squared_error(PRED, TARGET), rtol=1e-6)


def test_balanced_l1_matches_mmdetection_for_beta_not_one():
  alpha, gamma, beta = 0.3, 1.0, 0.5
  # d = 0 is a kink for beta != 1 (slopes +-(alpha / beta - alpha)): left out
  d = np.concatenate([np.linspace(-1.5, 1.5, 30), [1e-3, 0.2, 0.45, 0.55]]).astype(np.float32)
  loss = lambda p: jaxloss.balanced_l1_loss(p, np.zeros_like(d), alpha=alpha, gamma=gamma,
                                            beta=beta, reduction="none")
  np.testing.assert_allclose(loss(d), np_balanced_l1(d.astype(np.float64), alpha, gamma, beta),
                             rtol=1e-5, atol=1e-7)
  grad = jax.grad(lambda p: jnp.sum(loss(p)))(d)
  np.testing.assert_allclose(grad, np_balanced_l1_grad(d.astype(np.float64), alpha, gamma, beta),
                             rtol=1e-5, atol=1e-7)
  # continuous at d = beta: both sides approach gamma * beta + gamma / b - alpha * beta
  edge = jaxloss.balanced_l1_loss(np.array([beta * (1 - 1e-6), beta], np.float32), 0.0,
                                  alpha=alpha, gamma=gamma, beta=beta, reduction="none")
  b = np.exp(gamma / alpha) - 1
  np.testing.assert_allclose(edge, gamma * beta + gamma / b - alpha * beta, rtol=1e-5)


def test_balanced_l1_has_no_cancellation_at_small_errors():
  # beta = 1: the inlier branch is ~ alpha * b * d^2 / 2, a difference of terms ~ alpha * d
  d = np.array([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.099, 0.1, 0.101, 0.3], np.float32)
  loss = lambda p: jaxloss.balanced_l1_loss(p, np.zeros_like(d), reduction="none")
  d64 = d.astype(np.float64)
  np.testing.assert_allclose(loss(d), np_balanced_l1(d64, 0.5, 1.5, 1.0), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda p: jnp.sum(loss(p)))(d),
                             np_balanced_l1_grad(d64, 0.5, 1.5, 1.0), rtol=1e-5)


def test_balanced_l1_is_continuous_at_beta():
  beta = 1.0
  d = np.array([beta - 1e-4, beta + 1e-4], np.float32)
  out = jaxloss.balanced_l1_loss(d, np.zeros(2, np.float32), reduction="none")
  assert abs(float(out[1] - out[0])) < 1e-3
  with pytest.raises(ValueError, match=r"`beta` must be in \(0, inf\)"):
    jaxloss.balanced_l1_loss(d, d, beta=0.0)


@pytest.mark.parametrize("fn, kw, name", [
    (jaxloss.smooth_l1_loss, {"beta": -0.5}, r"`beta` must be in \[0, inf\)"),
    (jaxloss.balanced_l1_loss, {"alpha": 0.0}, r"`alpha` must be in \(0, inf\)"),
    (jaxloss.balanced_l1_loss, {"gamma": 0.0}, r"`gamma` must be in \(0, inf\)"),
    (jaxloss.balanced_l1_loss, {"alpha": -1.0}, r"`alpha` must be in \(0, inf\)"),
    (jaxloss.balanced_l1_loss, {"beta": float("nan")}, r"`beta` must be in \(0, inf\)"),
    (jaxloss.l1_loss, {"avg_factor": -2.0}, r"`avg_factor` must be in \[0, inf\)"),
])
def test_hyper_parameters_out_of_range_raise(fn, kw, name):
  with pytest.raises(ValueError, match=name):
    fn(PRED, TARGET, **kw)


def test_target_that_would_change_pred_shape_raises():
  pred, target = np.arange(4.0, dtype=np.float32), np.zeros((4, 1), np.float32)
  for fn in (jaxloss.l1_loss, jaxloss.mse_loss, jaxloss.smooth_l1_loss,
             jaxloss.balanced_l1_loss):
    with pytest.raises(ValueError, match=r"`target` of shape \(4, 1\) must broadcast"):
      fn(pred, target)
    with pytest.raises(ValueError, match="must broadcast to `pred`"):
      fn(pred, np.zeros(3, np.float32))
    # a scalar or a broadcastable target keeps pred's shape and is accepted
    np.testing.assert_allclose(fn(PRED, TARGET[:1]), fn(PRED, np.broadcast_to(TARGET[:1],
                                                                              PRED.shape)))
  np.testing.assert_allclose(jaxloss.mse_loss(pred, 0.0), np.mean(np.arange(4.0) ** 2))


def test_smooth_l1_beta_may_be_traced():
  # traced hyper-parameters are not checked (nothing can raise inside jit)
  loss = jax.jit(lambda b: jaxloss.smooth_l1_loss(PRED, TARGET, beta=b, reduction="none"))
  np.testing.assert_allclose(loss(0.5), np_smooth_l1(PRED - TARGET, 0.5), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss(0.0), np.abs(PRED - TARGET), rtol=1e-6)
