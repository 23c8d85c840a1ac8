"""Sigmoid focal loss, BCE and softmax CE against optax and plain jnp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxloss
from benchmarks.common import Case, Impl
from jaxloss._src import kernels as _fused
from jaxloss._src.reduce import reduce_loss

ALPHA, GAMMA = 0.25, 2.0


def _inputs(shape, num_classes=None):
  kx, kt = jax.random.split(jax.random.PRNGKey(0))
  logits = 3.0 * jax.random.normal(kx, shape, jnp.float32)
  if num_classes is None:
    return logits, (jax.random.uniform(kt, shape) < 0.05).astype(jnp.float32)
  return logits, jax.random.randint(kt, shape[:-1], 0, num_classes)


def _focal_jnp(x, t):
  """torchvision.ops.sigmoid_focal_loss transcribed to jnp."""
  p = jax.nn.sigmoid(x)
  ce = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
  p_t = p * t + (1 - p) * (1 - t)
  loss = ce * (1 - p_t) ** GAMMA
  return jnp.mean((ALPHA * t + (1 - ALPHA) * (1 - t)) * loss)


def _jaxloss_focal():
  if hasattr(jaxloss, "sigmoid_focal_loss"):
    return "jaxloss", lambda x, t: jaxloss.sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA)
  return "jaxloss kernel", lambda x, t: reduce_loss(
      _fused.sigmoid_focal(x, t, alpha=ALPHA, gamma=GAMMA))


def _jaxloss_bce():
  if hasattr(jaxloss, "binary_cross_entropy"):
    return "jaxloss", jaxloss.binary_cross_entropy
  return "jaxloss kernel", lambda x, t: reduce_loss(_fused.binary_cross_entropy(x, t))


def _jaxloss_ce():
  if hasattr(jaxloss, "cross_entropy"):
    return "jaxloss", jaxloss.cross_entropy
  return "jaxloss kernel", lambda x, y: reduce_loss(_fused.softmax_cross_entropy(x, y))


def _with_plain(name, fn, args):
  return [Impl(name, fn, args, fused=True), Impl(name + " (plain autodiff)", fn, args, fused=False)]


def focal_case(shape) -> Case:
  args = _inputs(shape)
  name, fn = _jaxloss_focal()
  impls = _with_plain(name, fn, args) + [
      Impl("optax", lambda x, t: jnp.mean(
          optax.sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA)), args),
      Impl("plain jnp", _focal_jnp, args),
  ]
  return Case("classification", f"sigmoid_focal_loss(alpha={ALPHA}, gamma={GAMMA})",
              str(shape), impls, "optax", args[0], "float targets")


def bce_case(shape) -> Case:
  args = _inputs(shape)
  name, fn = _jaxloss_bce()
  impls = _with_plain(name, fn, args) + [
      Impl("optax", lambda x, t: jnp.mean(optax.sigmoid_binary_cross_entropy(x, t)), args),
      Impl("plain jnp", lambda x, t: jnp.mean(
          -t * jax.nn.log_sigmoid(x) - (1 - t) * jax.nn.log_sigmoid(-x)), args),
  ]
  return Case("classification", "binary_cross_entropy", str(shape), impls, "optax", args[0])


def ce_case(shape) -> Case:
  args = _inputs(shape, num_classes=shape[-1])
  name, fn = _jaxloss_ce()
  impls = _with_plain(name, fn, args) + [
      Impl("optax", lambda x, y: jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(x, y)), args),
      Impl("plain jnp", lambda x, y: -jnp.mean(jnp.take_along_axis(
          jax.nn.log_softmax(x), y[..., None], axis=-1)), args),
  ]
  return Case("classification", "cross_entropy (integer labels)", str(shape), impls, "optax",
              args[0])


def cases(quick: bool, scale: int = 1) -> list[Case]:
  dense = (2, 8, 8, 80) if quick else (8 * scale, 128, 128, 80)
  seg = (2, 16, 16, 21) if quick else (8 * scale, 256, 256, 21)
  return [focal_case(dense), bce_case(dense), ce_case(seg)]
