"""Fused one-pass kernels (jaxloss._src.kernels) against plain autodiff and optax."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from jaxloss._src import kernels as _fused
from jaxloss._src.kernels import sigmoid as sigmoid_kernels
from jaxloss._src.reduce import broadcast_mask, fill_masked, reduce_loss
from tests.utils import assert_finite, bf16

try:
  from jax import enable_x64
except ImportError:  # jax < 0.8
  from jax.experimental import enable_x64


def _plain(fn, *args, **kwargs):
  with _fused.fused_kernels(False):
    return fn(*args, **kwargs)


def _value_and_grads(fn, args, argnums, fused):
  with _fused.fused_kernels(fused):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=argnums))(*args)


def _assert_fused_equals_plain(fn, args, argnums, rtol, atol=0.0):
  v1, g1 = _value_and_grads(fn, args, argnums, True)
  v0, g0 = _value_and_grads(fn, args, argnums, False)
  assert_finite((v1, g1))
  np.testing.assert_allclose(v1, v0, rtol=rtol, atol=atol)
  for a, b in zip(g1, g0, strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _logits(rng, shape, scale=3.0):
  return rng.normal(size=shape) * scale


def _hostile(shape):
  x = np.zeros(shape)
  x.flat[0::4] = 1e4
  x.flat[1::4] = -1e4
  x.flat[2::4] = 30.0
  x.flat[3::4] = -30.0
  return x


FOCAL_PARAMS = [(0.25, 2.0), (None, 0.5), (0.75, 0.0), (None, 1.5)]


@pytest.mark.parametrize("alpha,gamma", FOCAL_PARAMS)
def test_focal_soft_targets_float64(rng, alpha, gamma):
  with enable_x64(True):
    x = jnp.asarray(_logits(rng, (6, 5)))
    t = jnp.asarray(rng.uniform(size=(6, 5)))
    t = t.at[0].set(0.0).at[1].set(1.0)
    fn = lambda x, t: _fused.sigmoid_focal(x, t, alpha=alpha, gamma=gamma)
    _assert_fused_equals_plain(fn, (x, t), (0, 1), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("alpha,gamma", [(None, 0.5)])
def test_focal_integer_labels_float64(rng, alpha, gamma):
  with enable_x64(True):
    x = jnp.asarray(_logits(rng, (7, 4)))
    labels = jnp.asarray([0, 3, 4, -1, 2, 1, 0])
    fn = lambda x: _fused.sigmoid_focal(x, labels, alpha=alpha, gamma=gamma)
    _assert_fused_equals_plain(fn, (x,), (0,), rtol=1e-10, atol=1e-14)
    hot = jax.nn.one_hot(labels, 4, dtype=x.dtype)
    np.testing.assert_allclose(fn(x), _fused.sigmoid_focal(x, hot, alpha=alpha, gamma=gamma))


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.75, 0.0)])
def test_focal_float32_matches_plain(rng, alpha, gamma):
  x = jnp.asarray(_logits(rng, (64,)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(64,)) < 0.3, jnp.float32)
  fn = lambda x, t: _fused.sigmoid_focal(x, t, alpha=alpha, gamma=gamma)
  _assert_fused_equals_plain(fn, (x, t), (0,), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 1.5)])
def test_focal_matches_optax(rng, alpha, gamma):
  x = jnp.asarray(_logits(rng, (5, 8)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(5, 8)), jnp.float32)
  ours = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(_fused.sigmoid_focal(x, t, alpha=alpha, gamma=gamma))))(x)
  ref = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(optax.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma))))(x)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-6)


def _focal_numpy(x, t, alpha, gamma):
  p = 1 / (1 + np.exp(-x))
  ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
  z = p * (1 - t) + (1 - p) * t
  a = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
  return a * ce * z ** gamma


def test_focal_gradients_match_finite_differences(rng):
  x = _logits(rng, (20,), 2.0)
  t = rng.uniform(size=(20,))
  dx, dt = jax.jit(jax.vmap(jax.grad(lambda a, b: _fused.sigmoid_focal(a, b, alpha=0.3, gamma=1.7),
                                     argnums=(0, 1))))(jnp.asarray(x, jnp.float32),
                                                       jnp.asarray(t, jnp.float32))
  h = 1e-6
  num_dx = (_focal_numpy(x + h, t, 0.3, 1.7) - _focal_numpy(x - h, t, 0.3, 1.7)) / (2 * h)
  num_dt = (_focal_numpy(x, t + h, 0.3, 1.7) - _focal_numpy(x, t - h, 0.3, 1.7)) / (2 * h)
  np.testing.assert_allclose(dx, num_dx, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dt, num_dt, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_focal_hostile_logits(gamma):
  x = jnp.asarray(_hostile((4, 8)), jnp.float32)
  t = jnp.asarray(np.tile([1.0, 0.0, 0.3, 0.7], 8).reshape(4, 8), jnp.float32)
  for fused in (True, False):
    value, grads = _value_and_grads(
        lambda x, t: _fused.sigmoid_focal(x, t, alpha=0.25, gamma=gamma), (x, t), (0, 1), fused)
    assert_finite((value, grads))
  with enable_x64(True):
    x64, t64 = jnp.asarray(x, jnp.float64), jnp.asarray(t, jnp.float64)
    ref = _value_and_grads(
        lambda x, t: _fused.sigmoid_focal(x, t, alpha=0.25, gamma=gamma), (x64, t64), (0, 1),
        False)
  v1, g1 = _value_and_grads(
      lambda x, t: _fused.sigmoid_focal(x, t, alpha=0.25, gamma=gamma), (x, t), (0, 1), True)
  np.testing.assert_allclose(v1, ref[0], rtol=1e-6)
  np.testing.assert_allclose(g1[0], ref[1][0], rtol=1e-6, atol=1e-30)


def test_focal_label_sum_kernel_equals_per_element_focal(rng):
  """sigmoid_focal_sum (custom_jvp, FCOS's cls term) against the summed per-element
  kernel (custom_vjp, one-hot targets): values, gradients, jvp; sigmoid_focal_loss
  routes integer labels with "sum"/"mean" and no weight/where to it. (Plain autodiff
  differs at a logit of exactly 0, where |x| has no derivative.)"""
  from jaxloss import classification

  x = _logits(rng, (3, 7, 5), 4.0).astype(np.float32)
  x[0, 0] = [1e4, -1e4, 0, 30, -30]
  labels = jnp.asarray(rng.integers(-1, 7, size=(3, 7)), jnp.int32)  # -1, 5, 6: background
  tangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  x = jnp.asarray(x)

  def loss_fns(alpha, gamma):
    kernel = lambda x: _fused.sigmoid_focal_sum(x, labels, alpha=alpha, gamma=gamma)
    per_element = lambda x: jnp.sum(_fused.sigmoid_focal(x, labels, alpha=alpha, gamma=gamma))
    return kernel, per_element

  @jax.jit
  def run(x):
    out = []
    for alpha, gamma in ((0.25, 2.0), (None, 1.5)):
      kernel, per_element = loss_fns(alpha, gamma)
      out.append((jax.value_and_grad(kernel)(x), jax.value_and_grad(per_element)(x),
                  jax.jvp(kernel, (x,), (tangent,))[1]))
    mean = classification.sigmoid_focal_loss(x, labels, avg_factor=3.0)
    with _fused.fused_kernels(False):
      plain_mean = classification.sigmoid_focal_loss(x, labels, avg_factor=3.0)
    return out, mean, plain_mean

  out, mean, plain_mean = run(x)
  for (v, g), (rv, rg), jvp in out:
    assert_finite((v, g, jvp))
    np.testing.assert_allclose(v, rv, rtol=1e-5)
    np.testing.assert_allclose(g, rg, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jvp, jnp.sum(rg * tangent), rtol=1e-4)
  np.testing.assert_allclose(mean, plain_mean, rtol=1e-5)
  routed = jax.make_jaxpr(lambda x: classification.sigmoid_focal_loss(
      x, labels, reduction="sum"))(x)
  assert "custom_jvp_call" in str(routed)


def test_bce_float64(rng):
  with enable_x64(True):
    x = jnp.asarray(_logits(rng, (6, 3)))
    t = jnp.asarray(rng.uniform(size=(6, 3)))
    _assert_fused_equals_plain(_fused.binary_cross_entropy, (x, t), (0, 1), rtol=1e-10)
    w = jnp.asarray([0.5, 2.0, 3.0])
    _assert_fused_equals_plain(_fused.binary_cross_entropy, (x, t, w), (0, 1, 2), rtol=1e-10)


def test_bce_matches_optax_and_torch_formula(rng):
  x = jnp.asarray(_logits(rng, (9, 4)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(9, 4)), jnp.float32)
  ours = jax.jit(jax.value_and_grad(lambda x: jnp.sum(_fused.binary_cross_entropy(x, t))))(x)
  ref = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(optax.sigmoid_binary_cross_entropy(x, t))))(x)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-7)
  w = np.array([1.0, 2.0, 0.5, 4.0])
  xn, tn = np.asarray(x, np.float64), np.asarray(t, np.float64)
  logp = -np.logaddexp(0, -xn)
  log1mp = -np.logaddexp(0, xn)
  torch_form = -(w * tn * logp + (1 - tn) * log1mp)
  np.testing.assert_allclose(_fused.binary_cross_entropy(x, t, w), torch_form, rtol=1e-5)


def test_bce_hostile():
  x = jnp.asarray(_hostile((16,)), jnp.float32)
  t = jnp.asarray(np.tile([1.0, 0.0, 0.5, 1.0], 4), jnp.float32)
  w = jnp.full((16,), 2.0)
  for fused in (True, False):
    assert_finite(_value_and_grads(_fused.binary_cross_entropy, (x, t, w), (0, 1, 2), fused))
  _assert_fused_equals_plain(_fused.binary_cross_entropy, (x, t, w), (0, 1, 2), rtol=1e-6)


@pytest.mark.parametrize("smoothing,weighted", [(0.0, False), (0.1, True)])
def test_ce_float64(rng, smoothing, weighted):
  with enable_x64(True):
    x = jnp.asarray(_logits(rng, (2, 5, 6)))
    labels = jnp.asarray(rng.integers(0, 6, size=(2, 5)))
    cw = jnp.asarray(rng.uniform(0.5, 2.0, size=6)) if weighted else None
    fn = lambda x: _fused.softmax_cross_entropy(x, labels, class_weight=cw,
                                                label_smoothing=smoothing)
    _assert_fused_equals_plain(fn, (x,), (0,), rtol=1e-10, atol=1e-14)


def test_ce_matches_optax_and_torch_formula(rng):
  x = jnp.asarray(_logits(rng, (10, 7)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, size=10))
  ours = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(_fused.softmax_cross_entropy(x, labels))))(x)
  ref = jax.jit(jax.value_and_grad(lambda x: jnp.sum(
      optax.softmax_cross_entropy_with_integer_labels(x, labels))))(x)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-7)
  # torch.nn.functional.cross_entropy(weight=w, label_smoothing=eps, reduction="none")
  w, eps = np.linspace(0.5, 2.0, 7), 0.2
  xn = np.asarray(x, np.float64)
  logp = xn - np.log(np.sum(np.exp(xn - xn.max(-1, keepdims=True)), -1, keepdims=True)) - xn.max(
      -1, keepdims=True)
  nll = -w[labels] * logp[np.arange(10), labels]
  smooth = -np.sum(w * logp, -1)
  np.testing.assert_allclose(
      _fused.softmax_cross_entropy(x, labels, class_weight=w, label_smoothing=eps),
      (1 - eps) * nll + eps / 7 * smooth, rtol=1e-5)


def test_ce_hostile_and_ignored_rows():
  x = jnp.asarray(_hostile((4, 5)), jnp.float32)
  labels = jnp.asarray([0, 1, -100, 5])
  where = labels >= 0
  for fused in (True, False):
    with _fused.fused_kernels(fused):
      loss = lambda x: reduce_loss(
          _fused.softmax_cross_entropy(x, labels, label_smoothing=0.1), where=where)
      value, grad = jax.jit(jax.value_and_grad(loss))(x)
    assert_finite((value, grad))
    np.testing.assert_array_equal(grad[2], 0.0)


@pytest.mark.parametrize("kernel", ["focal", "bce", "ce"])
def test_where_and_weight_through_reduce_loss(rng, kernel):
  """Masked elements (NaN logits, sanitised by fill_masked) get 0 value and 0 grad."""
  x = _logits(rng, (4, 6))
  where = np.ones((4, 6), bool)
  where[1] = False
  where[2, :3] = False
  x[~where] = np.nan
  weight = jnp.asarray(rng.uniform(size=(4,)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(4, 6)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3])
  if kernel == "ce":
    where = where[:, 0] & np.asarray([True, False, True, True])
    weight = weight
    per = lambda x: _fused.softmax_cross_entropy(x, labels, class_weight=jnp.arange(1.0, 7.0))
  elif kernel == "bce":
    per = lambda x: _fused.binary_cross_entropy(x, t, jnp.full((6,), 2.0))
  else:
    per = lambda x: _fused.sigmoid_focal(x, t, alpha=0.25, gamma=1.5)

  def loss(x):
    mask = broadcast_mask(jnp.asarray(where), x.shape[:len(where.shape)])
    return reduce_loss(per(fill_masked(x, mask)), weight=weight, where=mask)

  x = jnp.asarray(x, jnp.float32)
  v1, g1 = jax.jit(jax.value_and_grad(loss))(x)
  with _fused.fused_kernels(False):
    v0, g0 = jax.jit(jax.value_and_grad(loss))(x)
  assert_finite((v1, g1))
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-9)
  full_mask = where if kernel != "ce" else np.broadcast_to(where[:, None], (4, 6))
  np.testing.assert_array_equal(np.asarray(g1)[~full_mask], 0.0)


def test_bfloat16_inputs(rng):
  x = bf16(_logits(rng, (8, 5)))
  t = bf16(rng.uniform(size=(8, 5)))

  def loss(x, t):
    return jnp.mean(_fused.sigmoid_focal(x.astype(jnp.float32), t.astype(jnp.float32),
                                         alpha=0.25, gamma=2.0))

  v1, g1 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, t)
  with _fused.fused_kernels(False):
    v0, g0 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, t)
  assert v1.dtype == jnp.float32 and g1[0].dtype == jnp.bfloat16
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  for a, b in zip(g1, g0, strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2)


def test_jit_and_vmap(rng):
  x = jnp.asarray(_logits(rng, (3, 4, 5)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, size=(3, 4)))

  def loss(x, labels):
    return jnp.sum(_fused.softmax_cross_entropy(x, labels)) + jnp.sum(
        _fused.sigmoid_focal(x, labels, alpha=0.25, gamma=2.0))

  per_example = jax.jit(jax.vmap(jax.grad(loss)))(x, labels)
  single = jax.jit(jax.grad(loss))
  for i in range(3):
    np.testing.assert_allclose(per_example[i], single(x[i], labels[i]), rtol=1e-6)


def test_forward_mode_needs_plain_path(rng):
  """jax.jvp/jacfwd of a custom_vjp raise; hessian (jacfwd over jacrev) works."""
  x = jnp.asarray(_logits(rng, (5,)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(5,)), jnp.float32)
  loss = jax.jit(lambda x: jnp.sum(_fused.sigmoid_focal(x, t, alpha=0.25, gamma=1.5)))
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(loss, (x,), (jnp.ones_like(x),))
  hessian = jax.jit(jax.hessian(loss))(x)
  with _fused.fused_kernels(False):
    plain = jax.jit(lambda x: jnp.sum(_fused.sigmoid_focal(x, t, alpha=0.25, gamma=1.5)))
    plain_hessian = jax.jit(jax.hessian(plain))(x)
    tangent = jax.jvp(plain, (x,), (jnp.ones_like(x),))[1]
  np.testing.assert_allclose(hessian, plain_hessian, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(tangent, jnp.sum(jax.grad(loss)(x)), rtol=1e-5)
  assert _fused.fused_enabled()


def test_switch_is_read_at_trace_time():
  _fused.set_fused_kernels(False)
  try:
    assert not _fused.fused_enabled()
    jax.jvp(lambda x: _fused.binary_cross_entropy(x, jnp.ones(3)), (jnp.zeros(3),),
            (jnp.ones(3),))
  finally:
    _fused.set_fused_kernels(True)
  assert _fused.fused_enabled()


def test_reduce_sum_is_exact(rng):
  x = jnp.asarray(rng.normal(size=(1000,)), jnp.float32)
  assert reduce_loss(x, reduction="sum") == jnp.sum(x)
  with enable_x64(True):
    x64 = jnp.asarray(rng.normal(size=(1000,)))
    assert reduce_loss(x64, reduction="sum").dtype == jnp.float64
    np.testing.assert_allclose(reduce_loss(x64, reduction="sum"), np.sum(np.asarray(x64)),
                               rtol=1e-14)


# ---------------------------------------------------------------------------
# Softmax region statistics (dice_loss, jaccard_loss, tversky_loss)

REGION_LOSSES = {
    "dice": jaxloss.dice_loss,
    "jaccard": jaxloss.jaccard_loss,
    "tversky": functools.partial(jaxloss.tversky_loss, alpha=0.3, beta=0.7, gamma=1.5),
}
IGN = 255


def _region_inputs(rng, shape=(3, 4, 5, 6)):
  """Logits and labels with ignored (255), out-of-range (-1, C) and `where`-masked pixels.

  Removed pixels hold NaN/inf logits: they must change neither value nor gradient.
  """
  c = shape[-1]
  x = _logits(rng, shape)
  labels = rng.integers(0, c, size=shape[:-1])
  labels[0, 0, :2] = IGN
  labels[1, 1, 0] = -1
  labels[1, 0, -1] = c
  labels[2, :, :] = 2  # class 2 only: the other classes are absent from image 2
  where = np.ones(shape[:-1], bool)
  where[0, -1] = False
  x[0, 0, 0] = np.nan
  x[0, 0, 1, 1] = np.inf
  x[0, -1, 0, 2] = -np.inf
  x[1, 1, 0] = np.nan
  x[0, -1, 1] = np.nan
  return x, labels, where


def _finite(x):
  return np.nan_to_num(x, nan=0.0, posinf=1e4, neginf=-1e4)


def _region_configs(labels, where, weight, class_weight=None, offset=0):
  """One vector of losses over loss functions and keywords (one compilation per path).

  Dice runs pooled and per image (and, with ``class_weight``, without background
  and squared); Jaccard and Tversky one of the two each, swapped by ``offset``.
  """
  common = dict(ignore_index=IGN, where=where)
  configs = [dict(), dict(per_image=True, weight=weight, classes="present", smooth=0.0)]
  extra = [] if class_weight is None else [
      dict(include_background=False, class_weight=class_weight, reduction="sum"),
      dict(squared=True, per_image=True, reduction="none")]
  calls = [(REGION_LOSSES["dice"], kw) for kw in configs + extra]
  calls += [(REGION_LOSSES[name], configs[(i + offset) % 2])
            for i, name in enumerate(("jaccard", "tversky"), 1)]

  def losses(x):
    return jnp.concatenate([jnp.ravel(fn(x, labels, **common, **kw)) for fn, kw in calls])
  return losses


def _jacobians(fn, xs, fused):
  with _fused.fused_kernels(fused):
    f = jax.jit(lambda x: (fn(x), jax.jacrev(fn)(x)))
    return [f(x) for x in xs]


def _assert_region_close(fn, xs, rtol):
  """Kernel and plain path agree on each input of ``xs`` (one compilation per path)."""
  jacobians = []
  for (v1, j1), (v0, j0) in zip(_jacobians(fn, xs, True), _jacobians(fn, xs, False),
                                strict=True):
    assert_finite((v1, j1))
    np.testing.assert_allclose(v1, v0, rtol=rtol, atol=rtol)
    j1, j0 = np.asarray(j1), np.asarray(j0)
    # Each loss's gradient relative to its largest entry (entries near 0 cancel).
    scale = np.max(np.abs(j0), axis=tuple(range(1, j0.ndim)), keepdims=True)
    np.testing.assert_allclose(j1 / scale, j0 / scale, rtol=rtol, atol=rtol)
    jacobians.append(j1)
  return jacobians


def test_region_stats_kernel_float64(rng):
  """Kernel == plain autodiff to float64 precision, for every masking/reduction keyword."""
  x, labels, where = _region_inputs(rng)
  with enable_x64(True):
    weight = jnp.asarray([0.5, 2.0, 1.0])
    class_weight = jnp.asarray([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    fn = _region_configs(labels, where, weight, class_weight)
    # With NaN at removed pixels (the kernel's sanitising branch), and finite.
    jacobians = _assert_region_close(fn, [jnp.asarray(x), jnp.asarray(_finite(x))],
                                     rtol=1e-10)
  removed = (labels == IGN) | (labels < 0) | (labels >= x.shape[-1]) | ~where
  for jac in jacobians:
    np.testing.assert_array_equal(jac[:, removed], 0.0)


def test_region_stats_kernel_float32_hostile(rng):
  """float32: logits of +-1e4 and +-30, an all-removed image, with and without NaN/inf."""
  x, labels, where = _region_inputs(rng)
  hostile = _hostile((4, 5, 6))
  x[1] = np.where(np.isfinite(x[1]), hostile, x[1])
  labels[2, :, :] = IGN
  fn = _region_configs(labels, where, jnp.asarray([0.5, 2.0, 1.0]), offset=1)
  xs = [jnp.asarray(x, jnp.float32), jnp.asarray(_finite(x), jnp.float32)]
  for jac in _assert_region_close(fn, xs, rtol=2e-6):
    np.testing.assert_array_equal(jac[:, 2], 0.0)


def test_region_stats_kernel_all_removed():
  """Every pixel ignored: the plain path's value (0 or 1 - s/s), zero gradients."""
  x = jnp.full((2, 3, 3, 4), jnp.nan)
  labels = jnp.full((2, 3, 3), IGN)
  loss = lambda x: jnp.stack([fn(x, labels, ignore_index=IGN, per_image=True)
                              for fn in REGION_LOSSES.values()])
  values, jac = jax.jit(lambda x: (loss(x), jax.jacrev(loss)(x)))(x)
  np.testing.assert_array_equal(values, 0.0)
  np.testing.assert_array_equal(jac, 0.0)


def test_region_stats_kernel_bfloat16_jit_vmap(rng):
  """bfloat16 logits (computed in float32) and vmap over a leading axis, against the plain path."""
  x, labels, where = _region_inputs(rng, (3, 2, 4, 5, 6))
  x = np.where(np.isfinite(x), x, 0.0)
  loss = lambda x, labels, where: jaxloss.dice_loss(x, labels, ignore_index=IGN, where=where,
                                                   per_image=True)
  args = (bf16(x), jnp.asarray(labels), jnp.asarray(where))
  grads = {}
  for fused in (True, False):
    with _fused.fused_kernels(fused):
      grads[fused] = jax.jit(jax.vmap(jax.value_and_grad(loss)))(*args)
  (v1, g1), (v0, g0) = grads[True], grads[False]
  assert v1.dtype == jnp.float32 and g1.dtype == jnp.bfloat16
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g1, np.float32), np.asarray(g0, np.float32),
                             rtol=1e-2, atol=1e-5)


def test_region_stats_kernel_forward_mode(rng):
  """jax.jvp raises through the kernel (custom_vjp); hessian works; the plain path does jvp."""
  x = jnp.asarray(_logits(rng, (2, 3, 4)), jnp.float32)
  labels = jnp.asarray([[0, 3, IGN], [1, 1, 2]])
  loss = lambda x: jaxloss.dice_loss(x, labels, ignore_index=IGN)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jit(lambda x: jax.jvp(loss, (x,), (x,)))(x)
  hessian = jax.jit(jax.hessian(loss))(x)
  with _fused.fused_kernels(False):
    plain_hessian, tangent, grad = jax.jit(lambda x: (
        jax.hessian(loss)(x), jax.jvp(loss, (x,), (jnp.ones_like(x),))[1], jax.grad(loss)(x)))(x)
  np.testing.assert_allclose(hessian, plain_hessian, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(tangent, jnp.sum(grad), rtol=1e-4, atol=1e-7)


ELEMENTWISE_KERNELS = {
    "focal": (sigmoid_kernels.focal_kernel, 2, (0.25, 2.0)),
    "focal_gamma_half": (sigmoid_kernels.focal_kernel, 2, (None, 0.5)),
    "focal_labels": (sigmoid_kernels.focal_labels_kernel, 1, (0.25, 2.0)),
    "bce": (sigmoid_kernels.bce_kernel, 2, ()),
    "bce_weighted": (sigmoid_kernels.bce_weighted_kernel, 3, ()),
}


def _kernel_args(rng, name):
  x = jnp.asarray(_logits(rng, (7, 5)))
  if name == "focal_labels":
    return (x, jnp.asarray(rng.integers(-1, 6, size=(7,))))
  t = jnp.asarray(rng.uniform(size=(7, 5)))
  return (x, t, jnp.asarray(rng.uniform(0.5, 2, size=(7, 5))))[:3 if name == "bce_weighted" else 2]


@pytest.mark.parametrize("name", list(ELEMENTWISE_KERNELS))
@pytest.mark.parametrize("form", ["recompute", "saved"])
def test_elementwise_kernel_forms_float64(rng, name, form):
  # The GPU form (gradient computed in the forward pass) and the CPU form
  # (recomputed in the backward pass) against plain autodiff of the value,
  # values, gradients and Hessian-vector products, whatever the backend.
  kernel, differentiable, static = ELEMENTWISE_KERNELS[name]
  with enable_x64(True):
    args = _kernel_args(rng, name)
    fn = getattr(kernel, form)
    argnums = tuple(range(differentiable))

    def total(f):
      return lambda *a: jnp.sum(jnp.sin(f(*a, *static)))

    value = jax.jit(jax.value_and_grad(total(fn), argnums))(*args)
    ref = jax.value_and_grad(total(lambda *a: kernel.recompute.fun(*a)), argnums)(*args)
    np.testing.assert_allclose(value[0], ref[0], rtol=1e-12)
    for a, b in zip(value[1], ref[1], strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    hvp = jax.grad(lambda x: jnp.vdot(jax.grad(total(fn))(x, *args[1:]), args[0]))(args[0])
    hvp_ref = jax.grad(lambda x: jnp.vdot(
        jax.grad(total(kernel.recompute.fun))(x, *args[1:]), args[0]))(args[0])
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-8, atol=1e-10)


def test_elementwise_kernel_form_follows_backend(monkeypatch, rng):
  x = jnp.asarray(_logits(rng, (4, 3)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(4, 3)), jnp.float32)
  jaxprs = {}
  for backend in ("cpu", "gpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    jaxprs[backend] = str(jax.make_jaxpr(jax.grad(
        lambda x: jnp.sum(_fused.binary_cross_entropy(x, t))))(x))
  # CPU: the backward recomputes from the saved inputs behind an optimization barrier.
  assert "optimization_barrier" in jaxprs["cpu"]
  assert "optimization_barrier" not in jaxprs["gpu"]


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_kernel_forms_hessian_finite_at_saturated_logits(gamma):
  # Both forms differentiate _focal_grads forward under jax.hessian; it once
  # formed 1 / z, whose derivative overflows float32 for z = 1 - p_t < 1e-19.
  x = jnp.array([[50.0, -50.0, 80.0, -80.0, 100.0, -100.0]])
  t = jnp.array([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
  labels = jnp.array([0])
  hessians = {}
  for form in ("recompute", "saved"):
    focal = getattr(sigmoid_kernels.focal_kernel, form)
    focal_labels = getattr(sigmoid_kernels.focal_labels_kernel, form)
    hessians[form] = jax.jit(lambda x, focal=focal, focal_labels=focal_labels: (
        jax.hessian(lambda x: jnp.sum(focal(x, t, 0.25, gamma)))(x),
        jax.hessian(lambda x: jnp.sum(focal_labels(x, labels, 0.25, gamma)))(x)))(x)
  assert_finite(hessians)
  for a, b in zip(hessians["recompute"], hessians["saved"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-37)


def test_region_kernel_only_on_cpu(monkeypatch, rng):
  # On a GPU the region statistics take the plain-autodiff path (measured faster
  # there); values and gradients are the same either way.
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=(2, 4, 4)))
  loss = lambda x: jaxloss.dice_loss(x, y)
  results = {}
  for backend in ("cpu", "gpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    jax.clear_caches()  # the choice is made while tracing
    results[backend] = (str(jax.make_jaxpr(loss)(x)), jax.value_and_grad(loss)(x))
  assert "custom_vjp_call" in results["cpu"][0]
  assert "custom_vjp_call" not in results["gpu"][0]
  np.testing.assert_allclose(results["gpu"][1][0], results["cpu"][1][0], rtol=1e-6)
  np.testing.assert_allclose(results["gpu"][1][1], results["cpu"][1][1], rtol=1e-5, atol=1e-7)
