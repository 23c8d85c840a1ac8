"""Speed and memory of ``jax.jit(jax.value_and_grad(retinanet_loss))`` at a COCO-like size.

Batch 8, 640x640 input, strides 8..128 (levels 80, 40, 20, 10, 5: 8,525
locations, 9 anchors each: A = 76,725), 80 classes, ground truth padded to 100
boxes. Reports compile time, step time (median of ``--steps``, interleaved
with the baseline), the compiled program's memory (``memory_analysis``), the
number of compilations over 10 batches carrying 0..100 real boxes, and, as
the ratio baseline, a bare ``softplus`` forward + backward over the same class
logits. Also the max-IoU assignment alone, and (``--gfl``) ``gfl_loss`` at the
same image size (one anchor per location, ATSS).

Run from the repository root: ``python -m benchmarks.retinanet_benchmark [--steps 10]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from benchmarks.fcos_benchmark import compiled, memory_mib, timed

B, IMAGE, NUM_CLASSES, M = 8, 640, 80, 100
STRIDES = (8, 16, 32, 64, 128)
SHAPES = [(IMAGE // s, IMAGE // s) for s in STRIDES]


def retina_heads(rng, per_location=9):
  cls = [jnp.asarray(rng.normal(-4, 1, size=(B, h, w, per_location * NUM_CLASSES)), jnp.float32)
         for h, w in SHAPES]
  box = [jnp.asarray(rng.normal(0, 0.5, size=(B, h, w, per_location * 4)), jnp.float32)
         for h, w in SHAPES]
  return cls, box


def gfl_heads(rng, reg_max=16):
  cls = [jnp.asarray(rng.normal(-4, 1, size=(B, h, w, NUM_CLASSES)), jnp.float32)
         for h, w in SHAPES]
  box = [jnp.asarray(rng.normal(0, 1, size=(B, h, w, 4 * (reg_max + 1))), jnp.float32)
         for h, w in SHAPES]
  return cls, box


def ground_truth(rng, num_real):
  """Padded ``[B, M]`` ground truth with ``num_real[i]`` real boxes in image i; padding
  rows are NaN, which must not matter."""
  xy = rng.uniform(0, IMAGE - 16, size=(B, M, 2))
  wh = rng.uniform(8, 320, size=(B, M, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, IMAGE)], -1).astype(np.float32)
  mask = np.arange(M)[None] < np.asarray(num_real)[:, None]
  boxes[~mask] = np.nan
  labels = rng.integers(0, NUM_CLASSES, size=(B, M)).astype(np.int32)
  return jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(mask)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--calls", type=int, default=None,
                      help="calls per timed sample (default 10 on a GPU, else 1)")
  parser.add_argument("--gfl", action="store_true", help="also time gfl_loss")
  args = parser.parse_args()
  if args.calls is None:
    args.calls = 10 if jax.default_backend() == "gpu" else 1
  rng = np.random.default_rng(0)
  heads = retina_heads(rng)
  gt = ground_truth(rng, rng.integers(0, M + 1, size=B))
  anchors = jaxloss.anchor_grid(SHAPES, STRIDES)
  traces = [0]

  def loss(cls, box, boxes, labels, mask):
    traces[0] += 1
    out = jaxloss.retinanet_loss(cls, box, boxes, labels, mask, num_classes=NUM_CLASSES)
    return out["loss"], out

  def softplus(cls):
    return sum(jnp.sum(jax.nn.softplus(x)) for x in cls)

  def assign(boxes, labels, mask):
    return jaxloss.max_iou_assign(anchors, boxes, labels, mask, num_classes=NUM_CLASSES)

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  programs = [("retinanet_loss value_and_grad", grad, (*heads, *gt)),
              ("softplus fwd+bwd (baseline)", jax.value_and_grad(softplus), (heads[0],)),
              ("max_iou_assign alone", assign, gt)]
  if args.gfl:
    def gfl(cls, box, boxes, labels, mask):
      out = jaxloss.gfl_loss(cls, box, boxes, labels, mask, num_classes=NUM_CLASSES)
      return out["loss"], out
    gheads = gfl_heads(rng)
    programs += [("gfl_loss value_and_grad", jax.value_and_grad(gfl, (0, 1), has_aux=True),
                  (*gheads, *gt)),
                 ("softplus fwd+bwd (GFL logits)", jax.value_and_grad(softplus), (gheads[0],))]
  built = [compiled(fn, a) for _, fn, a in programs]
  steps = timed([(c, a) for (c, _), (_, _, a) in zip(built, programs, strict=True)], args.steps,
                args.calls)
  bases = [steps[1]] * 3 + [steps[4]] * 2 if args.gfl else [steps[1]] * 3

  traces[0] = 0
  jitted = jax.jit(lambda *a: grad(*a))  # a new function: jit's trace cache starts empty
  for n in np.linspace(0, M, 10).astype(int):
    jax.block_until_ready(jitted(*heads, *ground_truth(rng, np.full(B, n))))
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   B={B} image={IMAGE} "
        f"A={anchors.shape[0]} C={NUM_CLASSES} M={M}")
  print(f"{'program':32s} {'compile s':>9s} {'(cpu s)':>8s} {'step ms':>8s} "
        f"{'x softplus':>10s} {'temp MiB':>9s} {'total MiB':>9s}")
  for (name, _, _), (c, (wall, cpu)), ts, base in zip(programs, built, steps, bases,
                                                      strict=True):
    temp, total = memory_mib(c)
    print(f"{name:32s} {wall:9.2f} {cpu:8.2f} {ts * 1e3:8.2f} {ts / base:10.2f} "
          f"{temp:9.1f} {total:9.1f}")
  print(f"compilations over 10 batches with 0..{M} real boxes: {traces[0]}")
  print(f"(step: median of {args.steps} samples of {args.calls} calls, interleaved; "
        "compile: trace + lower + compile; total MiB: temporaries + arguments + outputs)")


if __name__ == "__main__":
  main()
