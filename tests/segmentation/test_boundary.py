"""signed_distance_map against scipy's distance transform; boundary_loss against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import bf16, jit_counting, load_fixture, value_and_grad_finite

F = load_fixture("scipy_edt.npz")


@pytest.mark.parametrize("k", ["1", "2", "3", "big"])
def test_signed_distance_map_matches_scipy(k):
  np.testing.assert_allclose(jaxloss.signed_distance_map(F[f"m{k}"]), F[f"sdm{k}"],
                             rtol=1e-6, atol=1e-6)


def test_signed_distance_map_signs_empty_full_and_retrace():
  out = np.asarray(jaxloss.signed_distance_map(F["m2"]))
  m = F["m2"]
  assert np.all(out[0][m[0]] < 0) and np.all(out[0][~m[0]] > 0)
  assert np.all(out[1] == 0) and np.all(out[2] == 0)
  fn, counter = jit_counting(jaxloss.signed_distance_map)
  fn(jnp.asarray(m))
  fn(jnp.asarray(~m).astype(jnp.uint8))
  assert counter.count == 2  # bool and uint8 inputs; values never retrace
  fn(jnp.asarray(m[::-1]))
  assert counter.count == 2
  with pytest.raises(ValueError, match="spatial"):
    jaxloss.signed_distance_map(jnp.zeros((5,), bool))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, (2, 9, 10))
  one_hot = np.eye(3, dtype=bool)[labels]
  dist = np.moveaxis(np.stack([np.asarray(jaxloss.signed_distance_map(one_hot[..., c]))
                               for c in range(3)]), 0, -1)
  return rng.normal(size=(2, 9, 10, 3)).astype(np.float32), dist, labels, one_hot


def test_boundary_loss_is_kervadec_surface_loss():
  logits, dist, _, _ = _inputs()
  probs = np_softmax(logits.astype(np.float64))
  expected = (probs[..., 1:] * dist[..., 1:]).mean()
  np.testing.assert_allclose(jaxloss.boundary_loss(logits, dist), expected, rtol=1e-5)
  np.testing.assert_allclose(jaxloss.boundary_loss(logits, dist, include_background=True),
                             (probs * dist).mean(), rtol=1e-5)
  sig = 1 / (1 + np.exp(-logits.astype(np.float64)))
  np.testing.assert_allclose(
      jaxloss.boundary_loss(logits, dist, activation="sigmoid", reduction="sum"),
      (sig[..., 1:] * dist[..., 1:]).sum(), rtol=1e-5)
  # Gradient of sum(p_c * phi_c) through the softmax: p_c (phi_c - sum_k p_k phi_k).
  d = np.where(np.arange(3) == 0, 0.0, dist)
  grad = probs * (d - (probs * d).sum(-1, keepdims=True)) / d[..., 1:].size
  np.testing.assert_allclose(jax.grad(jaxloss.boundary_loss)(logits, dist), grad,
                             rtol=1e-4, atol=1e-7)
  assert np.all(np.asarray(jax.grad(jaxloss.boundary_loss, 1)(logits, dist)) == 0)


def test_boundary_loss_is_minimal_at_the_ground_truth():
  logits, dist, _, one_hot = _inputs()
  perfect = jnp.asarray(np.where(one_hot, 30.0, -30.0), jnp.float32)
  assert jaxloss.boundary_loss(perfect, dist) < jaxloss.boundary_loss(logits, dist)


def test_boundary_loss_masks_reductions_and_hostile_inputs():
  logits, dist, labels, _ = _inputs()
  where = labels != 2
  nan_logits = jnp.where(where[..., None], logits, jnp.nan)
  value, grad = value_and_grad_finite(
      lambda x: jaxloss.boundary_loss(x, dist, where=where), nan_logits)
  probs = np_softmax(logits.astype(np.float64))
  per = (probs * dist)[..., 1:][where]
  np.testing.assert_allclose(value, per.mean(), rtol=1e-5)
  assert np.all(np.asarray(grad)[~where] == 0)
  assert jaxloss.boundary_loss(logits, dist, reduction="none").shape == (2, 9, 10, 2)
  with jax.debug_nans(True):
    value_and_grad_finite(lambda x: jaxloss.boundary_loss(x, dist), jnp.asarray(logits) * 1e4)
    value_and_grad_finite(lambda x: jaxloss.boundary_loss(
        x, dist, where=jnp.zeros(labels.shape, bool)), jnp.asarray(logits))
  assert jaxloss.boundary_loss(bf16(logits), dist).dtype == jnp.float32
  np.testing.assert_allclose(
      jax.vmap(lambda x, d: jaxloss.boundary_loss(x[None], d[None], reduction="sum"))(
          logits, dist).sum(),
      jaxloss.boundary_loss(logits, dist, reduction="sum"), rtol=1e-5)
  with pytest.raises(ValueError, match="dist_maps"):
    jaxloss.boundary_loss(logits, dist[..., :2])
  with pytest.raises(ValueError, match="activation"):
    jaxloss.boundary_loss(logits, dist, activation="tanh")


H = load_fixture("monai_hausdorff.npz")
HD_CASES = [
    ("hd2", "logits2", "labels2", {}),
    ("hd2_none_bg", "logits2", "labels2", dict(include_background=True, reduction="none")),
    ("hd2_a1_batch", "logits2", "labels2", dict(alpha=1.0, per_image=False)),
    ("hd3_sum", "logits3", "labels3", dict(include_background=True, reduction="sum")),
    ("hdb", "logitsb", "targetb", dict(activation="sigmoid")),
]


@pytest.mark.parametrize("key,xk,yk,kw", HD_CASES, ids=[c[0] for c in HD_CASES])
def test_hausdorff_dt_matches_monai(key, xk, yk, kw):
  x, y = jnp.asarray(H[xk], jnp.float32), jnp.asarray(H[yk])
  loss = lambda a: jaxloss.hausdorff_dt_loss(a, y, **kw)
  expected = H[f"{key}_value"]
  np.testing.assert_allclose(loss(x), expected.reshape(expected.shape[:2]) if expected.ndim
                             else expected, rtol=2e-5, atol=1e-6)
  if f"{key}_grad" in H:
    np.testing.assert_allclose(jax.grad(loss)(x), H[f"{key}_grad"], rtol=1e-4, atol=1e-6)


def test_hausdorff_dt_masks_and_hostile_inputs():
  x, y = jnp.asarray(H["logits2"], jnp.float32), jnp.asarray(H["labels2"])
  ignored = y.at[:, :2].set(255)
  nan_x = x.at[:, :2].set(jnp.nan)
  value, grad = value_and_grad_finite(
      lambda a: jaxloss.hausdorff_dt_loss(a, ignored, ignore_index=255), nan_x)
  np.testing.assert_allclose(
      value, jaxloss.hausdorff_dt_loss(x, y, where=ignored != 255), rtol=1e-6)
  assert np.all(np.asarray(grad)[:, :2] == 0)
  with jax.debug_nans(True):
    value_and_grad_finite(lambda a: jaxloss.hausdorff_dt_loss(a, y.astype(jnp.uint8)), x * 1e4)
    value_and_grad_finite(lambda a: jaxloss.hausdorff_dt_loss(a, y * 0), x)
  assert jaxloss.hausdorff_dt_loss(bf16(x), y).dtype == jnp.float32
  with pytest.raises(ValueError, match="alpha"):
    jaxloss.hausdorff_dt_loss(x, y, alpha=0.0)


K = load_fixture("kornia_hausdorff.npz")
ER_CASES = [
    ("er2", "probs2", "labels2", {}),
    ("er2_a1_k4_sum", "probs2", "labels2", dict(alpha=1.0, k=4, reduction="sum")),
    ("er2_none", "probs2", "labels2", dict(k=3, reduction="none")),
    ("er3", "probs3", "labels3", {}),
]


@pytest.mark.parametrize("key,xk,yk,kw", ER_CASES, ids=[c[0] for c in ER_CASES])
def test_hausdorff_er_matches_kornia(key, xk, yk, kw):
  x, y = jnp.asarray(K[xk], jnp.float32), jnp.asarray(K[yk])
  loss = lambda a: jaxloss.hausdorff_er_loss(a, y, activation=None, **kw)
  expected = K[f"{key}_value"]
  if expected.ndim:  # kornia's [C, B, 1, H, W] -> [B, H, W, C]
    expected = np.moveaxis(expected[:, :, 0], 0, -1)
  np.testing.assert_allclose(loss(x), expected, rtol=2e-5, atol=1e-5)
  if f"{key}_grad" in K:
    np.testing.assert_allclose(jax.grad(loss)(x), K[f"{key}_grad"], rtol=1e-4, atol=1e-5)


def test_hausdorff_er_hostile_inputs_and_errors():
  x, y = jnp.asarray(H["logits2"], jnp.float32), jnp.asarray(H["labels2"])
  with jax.debug_nans(True):
    value_and_grad_finite(lambda a: jaxloss.hausdorff_er_loss(a, y.astype(jnp.int8)), x * 1e4)
    value_and_grad_finite(lambda a: jaxloss.hausdorff_er_loss(
        a, y, where=jnp.zeros(y.shape, bool)), x)
  assert jaxloss.hausdorff_er_loss(bf16(x), y).dtype == jnp.float32
  with pytest.raises(TypeError, match="k"):
    jaxloss.hausdorff_er_loss(x, y, k=2.0)
  with pytest.raises(ValueError, match="k"):
    jaxloss.hausdorff_er_loss(x, y, k=0)
