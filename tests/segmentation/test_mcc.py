"""mcc_loss against segmentation_models_pytorch 0.6.0's MCCLoss and float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.utils import bf16, load_fixture, value_and_grad_finite

F = load_fixture("smp_mcc.npz")


def np_mcc(p, t, eps):
  tp, tn = (p * t).sum() + eps, ((1 - p) * (1 - t)).sum() + eps
  fp, fn = (p * (1 - t)).sum() + eps, ((1 - p) * t).sum() + eps
  return 1 - (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


@pytest.mark.parametrize("key,eps", [("mcc", 1e-5), ("mcc_eps1", 1.0)])
def test_matches_smp_value_and_grad(key, eps):
  logits, target = jnp.asarray(F["logits"], jnp.float32), jnp.asarray(F["target"])
  probs = jax.nn.sigmoid(logits)
  np.testing.assert_allclose(jaxloss.mcc_loss(logits, target, eps=eps), F[f"{key}_value"],
                             rtol=1e-5)
  grad = jax.grad(lambda p: jaxloss.mcc_loss(p, target, activation=None, eps=eps))(probs)
  np.testing.assert_allclose(grad, F[f"{key}_grad_probs"], rtol=1e-4, atol=1e-7)


def test_per_class_per_image_masks_and_shard_map(devices):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 5, 6))
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  t = np.eye(3)[labels]
  per_image = jaxloss.mcc_loss(logits, labels, per_image=True, reduction="none")
  expected = [[np_mcc(probs[b, ..., c], t[b, ..., c], 1e-5) for c in range(3)] for b in range(2)]
  np.testing.assert_allclose(per_image, expected, rtol=1e-5)
  keep = labels != 2
  np.testing.assert_allclose(
      jaxloss.mcc_loss(logits, np.where(keep, labels, 255), ignore_index=255, reduction="none"),
      [np_mcc(probs[..., c][keep], t[..., c][keep], 1e-5) for c in range(3)], rtol=1e-5)
  mesh = jax.sharding.Mesh(np.array(devices[:2]), ("d",))
  sharded = jax.shard_map(lambda x, y: jaxloss.mcc_loss(x, y, axis_name="d"), mesh=mesh,
                          in_specs=(P("d"), P("d")), out_specs=P())
  np.testing.assert_allclose(sharded(logits, labels), jaxloss.mcc_loss(logits, labels),
                             rtol=1e-5)


def test_hostile_inputs():
  labels = np.zeros((2, 4, 4), np.uint8)
  logits = jnp.full((2, 4, 4, 1), 1e4)
  with jax.debug_nans(True):
    value_and_grad_finite(lambda x: jaxloss.mcc_loss(x, labels), logits)
    value_and_grad_finite(lambda x: jaxloss.mcc_loss(x, labels, eps=0.0), -logits)
    value_and_grad_finite(lambda x: jaxloss.mcc_loss(
        x, labels, where=np.zeros(labels.shape, bool), eps=0.0), logits)
  assert jaxloss.mcc_loss(bf16(logits), labels).dtype == jnp.float32
  with pytest.raises(ValueError, match="eps"):
    jaxloss.mcc_loss(logits, labels, eps=-1.0)
