"""IoU-family box losses on aligned box pairs against the memory-bound floor."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxloss
from benchmarks.common import FLOOR, Case, Impl

LOSSES = ("iou_loss", "giou_loss", "diou_loss", "ciou_loss", "eiou_loss", "siou_loss")


def _boxes(key, n):
  kc, ks = jax.random.split(key)
  centre = jax.random.uniform(kc, (n, 2), minval=0, maxval=512)
  size = jax.random.uniform(ks, (n, 2), minval=4, maxval=128)
  return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def _giou_jnp(pred, target, eps=1e-7):
  """torchvision.ops.generalized_box_iou_loss transcribed to jnp."""
  x1, y1, x2, y2 = jnp.moveaxis(pred, -1, 0)
  a1, b1, a2, b2 = jnp.moveaxis(target, -1, 0)
  iw = jnp.maximum(jnp.minimum(x2, a2) - jnp.maximum(x1, a1), 0)
  ih = jnp.maximum(jnp.minimum(y2, b2) - jnp.maximum(y1, b1), 0)
  inter = iw * ih
  union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
  iou = inter / (union + eps)
  hull = (jnp.maximum(x2, a2) - jnp.minimum(x1, a1)) * (jnp.maximum(y2, b2) - jnp.minimum(y1, b1))
  return jnp.mean(1 - iou + (hull - union) / (hull + eps))


def cases(quick: bool, scale: int = 1) -> list:
  n = 1024 if quick else 1_000_000 * scale
  kp, kt = jax.random.split(jax.random.PRNGKey(3))
  args = (_boxes(kp, n), _boxes(kt, n))
  out = []
  for name in LOSSES:
    fn = getattr(jaxloss, name)
    impls = [Impl("jaxloss", lambda p, t, fn=fn: fn(p, t), args)]
    if name == "giou_loss":
      impls.append(Impl("plain jnp (torchvision)", _giou_jnp, args))
    out.append(Case("boxes", name, f"[{n}, 4] pairs", impls, FLOOR, args[0],
                    "no optax peer: ratios against the floor"))
  return out
