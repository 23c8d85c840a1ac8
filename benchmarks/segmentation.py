"""Dice loss from integer labels against optax.losses.dice_loss on one-hot targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxloss
from benchmarks.common import Case, Impl


def _dice_jnp(logits, labels):
  """Soft dice pooled over batch and space per class (smp's form), one-hot in jnp."""
  p = jax.nn.softmax(logits)
  t = jax.nn.one_hot(labels, logits.shape[-1], dtype=p.dtype)
  axes = tuple(range(p.ndim - 1))
  inter = jnp.sum(p * t, axes)
  card = jnp.sum(p, axes) + jnp.sum(t, axes)
  return jnp.mean(1 - (2 * inter + 1.0) / (card + 1.0))


def dice_case(shape) -> Case | str:
  kx, ky = jax.random.split(jax.random.PRNGKey(2))
  logits = jax.random.normal(kx, shape)
  labels = jax.random.randint(ky, shape[:-1], 0, shape[-1])
  one_hot = jax.nn.one_hot(labels, shape[-1])
  impls = [
      Impl("jaxloss (int labels)", lambda x, y: jaxloss.dice_loss(x, y), (logits, labels)),
      Impl("jaxloss (plain autodiff)", lambda x, y: jaxloss.dice_loss(x, y),
           (logits, labels), fused=False),
      Impl("optax (one-hot)", lambda x, t: jnp.mean(optax.losses.dice_loss(x, t)),
           (logits, one_hot)),
      Impl("plain jnp (int labels)", _dice_jnp, (logits, labels)),
  ]
  return Case("segmentation", "dice_loss (softmax)", str(shape), impls, "optax (one-hot)", logits,
              "optax is per image, jaxloss pools the batch; peak memory counts optax's one-hot "
              "input")


def cases(quick: bool, scale: int = 1) -> list:
  return [dice_case((2, 16, 16, 21) if quick else (8 * scale, 256, 256, 21))]
