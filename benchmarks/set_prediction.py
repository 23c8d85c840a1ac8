"""Step time, compile time and memory of the set prediction criteria, matching included.

* ``detr_loss`` ``value_and_grad`` at B=8, Q=300, 91 classes (+ no object), M=100 padded
  targets (a random 0..100 real per image), 5 aux layers + the output layer, against a bare
  softmax cross entropy fwd+bwd over the same logits; compilations over batches with 0..100
  real boxes.
* ``mask2former_loss`` ``value_and_grad`` at B=4, Q=100, 256x256 mask logits, M=20 masks,
  12,544 points, against a dense (unsampled) BCE + dice of the matched masks over the full
  256x256 masks (the matching given), with the compiled programs' memory.

``--quick`` runs tiny shapes (a smoke test). Times are medians of ``--steps`` interleaved
samples. Run: ``python benchmarks/set_prediction.py [--steps 5] [--quick]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from benchmarks.fcos_benchmark import compiled, memory_mib, timed


def boxes(rng, *shape):
  return np.concatenate([rng.uniform(0.2, 0.8, (*shape, 2)), rng.uniform(0.05, 0.4, (*shape, 2))],
                        -1).astype(np.float32)


def detr_case(rng, b, q, k, m, layers):
  logits = rng.normal(size=(layers, b, q, k + 1)).astype(np.float32)
  preds = boxes(rng, layers, b, q)
  gt_mask = np.arange(m) < rng.integers(0, m + 1, b)[:, None]
  gt = (np.where(gt_mask[..., None], boxes(rng, b, m), np.nan).astype(np.float32),
        rng.integers(0, k, (b, m)).astype(np.int32), gt_mask)
  traces = [0]

  def loss(logits, preds, gt_boxes, gt_labels, gt_mask):
    traces[0] += 1
    out = jaxloss.detr_loss(logits[-1], preds[-1], gt_boxes, gt_labels, gt_mask, num_classes=k,
                            aux_cls_logits=logits[:-1], aux_box_preds=preds[:-1])
    return out["loss"]

  def ce(logits):
    return jnp.mean(-jax.nn.log_softmax(logits)[..., -1])

  programs = [("detr_loss fwd+bwd", jax.value_and_grad(loss, (0, 1)), (logits, preds, *gt)),
              ("softmax CE fwd+bwd (baseline)", jax.value_and_grad(ce), (logits,))]
  return programs, (loss, logits, preds, gt, traces)


def count_traces(loss, logits, preds, gt, traces, rng):
  traces[0] = 0
  fn = jax.jit(jax.value_and_grad(loss, (0, 1)))
  m = gt[2].shape[1]
  for n in np.linspace(0, m, 6).astype(int):
    mask = np.broadcast_to(np.arange(m) < n, gt[2].shape)
    jax.block_until_ready(fn(logits, preds, gt[0], gt[1], mask))
  return traces[0]


def mask2former_case(rng, b, q, k, hw, m, points):
  logits = rng.normal(size=(b, q, k + 1)).astype(np.float32)
  masks = rng.normal(0, 3, (b, q, hw, hw)).astype(np.float32)
  gt_masks = (rng.uniform(size=(b, m, hw, hw)) < 0.3).astype(np.float32)
  gt_labels = rng.integers(0, k, (b, m)).astype(np.int32)
  gt_mask = np.ones((b, m), bool)
  key = jax.random.key(0)

  def loss(logits, masks):
    return jaxloss.mask2former_loss(logits, masks, gt_masks, gt_labels, gt_mask, key=key,
                                    num_classes=k, num_points=points)["loss"]

  index = np.stack([rng.permutation(q)[:m] for _ in range(b)])

  def dense(masks):
    matched = jnp.take_along_axis(masks, index[:, :, None, None], axis=1)
    bce = jnp.mean(jax.nn.softplus(matched) - matched * gt_masks, axis=(-2, -1))
    p = jax.nn.sigmoid(matched)
    inter = jnp.sum(p * gt_masks, (-2, -1))
    dice = 1 - (2 * inter + 1) / (jnp.sum(p, (-2, -1)) + jnp.sum(gt_masks, (-2, -1)) + 1)
    return jnp.sum(bce + dice) / m

  return [("mask2former_loss fwd+bwd", jax.value_and_grad(loss, (0, 1)), (logits, masks)),
          ("dense BCE + dice fwd+bwd (baseline)", jax.value_and_grad(dense), (masks,))]


def report(title, programs, steps, calls):
  built = [compiled(fn, a) for _, fn, a in programs]
  times = timed([(c, a) for (c, _), (_, _, a) in zip(built, programs, strict=True)], steps, calls)
  print(title)
  print(f"{'program':36s} {'compile s':>9s} {'step ms':>8s} {'x baseline':>10s} "
        f"{'temp MiB':>9s} {'total MiB':>9s}")
  for (name, _, _), (c, (wall, _)), t in zip(programs, built, times, strict=True):
    temp, total = memory_mib(c)
    print(f"{name:36s} {wall:9.2f} {t * 1e3:8.2f} {t / times[-1]:10.2f} {temp:9.1f} {total:9.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  calls = 10 if jax.default_backend() == "gpu" else 1
  rng = np.random.default_rng(0)
  detr = (2, 10, 5, 4, 2) if args.quick else (8, 300, 91, 100, 6)
  m2f = (2, 6, 3, 16, 3, 64) if args.quick else (4, 100, 133, 256, 20, 12544)
  print(f"device: {jax.devices()[0].device_kind}")
  programs, extra = detr_case(rng, *detr)
  report(f"detr_loss: B={detr[0]} Q={detr[1]} K={detr[2]}+1 M={detr[3]} layers={detr[4]}",
         programs, args.steps, calls)
  print(f"compilations over 6 batches with 0..{detr[3]} real boxes: {count_traces(*extra, rng)}")
  report(f"mask2former_loss: B={m2f[0]} Q={m2f[1]} K={m2f[2]}+1 masks {m2f[3]}^2 M={m2f[4]} "
         f"points={m2f[5]}", mask2former_case(rng, *m2f), args.steps, calls)


if __name__ == "__main__":
  main()
