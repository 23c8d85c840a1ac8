"""Smooth L1 (Huber) against optax.huber_loss and plain jnp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxloss
from benchmarks.common import Case, Impl


def huber_case(shape) -> Case:
  kp, kt = jax.random.split(jax.random.PRNGKey(1))
  args = (jax.random.normal(kp, shape), jax.random.normal(kt, shape))

  def plain(p, t):
    d = jnp.abs(p - t)
    return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))

  impls = [
      Impl("jaxloss", lambda p, t: jaxloss.smooth_l1_loss(p, t, beta=1.0), args),
      Impl("optax", lambda p, t: jnp.mean(optax.huber_loss(p, t, delta=1.0)), args),
      Impl("plain jnp", plain, args),
  ]
  return Case("regression", "smooth_l1_loss(beta=1) = huber_loss(delta=1)", str(shape), impls,
              "optax", args[0])


def cases(quick: bool, scale: int = 1) -> list[Case]:
  return [huber_case((2, 8, 8, 80) if quick else (8 * scale, 128, 128, 80))]
