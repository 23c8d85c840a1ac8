"""Speed and memory of ``jax.jit(jax.value_and_grad(yolov8_loss))`` (and ``yolox_loss``) at
YOLOv8's COCO size.

Batch 16, 640x640 input, strides 8/16/32 (levels 80, 40, 20: A = 8400 priors), 80
classes, 16 bins per box side, ground truth padded to 100 boxes (about 30 real).
Reports compile time, step time (median of ``--steps`` after warm-up), the compiled
program's memory (``memory_analysis``), the number of compilations over 10 batches
carrying 0..100 real boxes, and, as the ratio baseline, a bare ``softplus`` forward +
backward over the same classification logits in the same run (timings interleaved).
Also the task-aligned and SimOTA assignments alone (the loss's own head
shapes; YOLOX's box head has 4 channels and an objectness map).

Run: ``python benchmarks/yolo_benchmark.py [--steps 10]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from benchmarks.fcos_benchmark import compiled, memory_mib, timed
from jaxloss.detection.losses.yolo import yolov8_points

B, IMAGE, NUM_CLASSES, M, REAL, REG_MAX = 16, 640, 80, 100, 30, 16
STRIDES = (8, 16, 32)


def head_outputs(rng):
  shapes = [(B, IMAGE // s, IMAGE // s) for s in STRIDES]
  cls = [jnp.asarray(rng.normal(-4, 1, size=(*s, NUM_CLASSES)), jnp.float32) for s in shapes]
  box = [jnp.asarray(rng.normal(0, 1, size=(*s, 4 * REG_MAX)), jnp.float32) for s in shapes]
  return cls, box


def ground_truth(rng, num_real):
  """Padded ``[B, M]`` ground truth, ``num_real[i]`` real boxes in image i; NaN padding."""
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
  args = parser.parse_args()
  if args.calls is None:
    args.calls = 10 if jax.default_backend() == "gpu" else 1
  rng = np.random.default_rng(0)
  heads = head_outputs(rng)
  gt = ground_truth(rng, rng.integers(REAL - 10, REAL + 11, size=B))
  traces = [0]

  def loss(cls, box, boxes, labels, mask):
    traces[0] += 1
    out = jaxloss.yolov8_loss(cls, box, boxes, labels, mask, num_classes=NUM_CLASSES)
    return out["loss"], out

  obj = [jnp.asarray(rng.normal(-4, 1, size=(*x.shape[:3], 1)), jnp.float32) for x in heads[0]]
  raw = [jnp.asarray(rng.normal(0, 0.5, size=(*x.shape[:3], 4)), jnp.float32) for x in heads[0]]

  def yolox(cls, box, obj, boxes, labels, mask):
    out = jaxloss.yolox_loss(cls, box, obj, boxes, labels, mask, num_classes=NUM_CLASSES)
    return out["loss"], out

  def softplus(cls):
    return sum(jnp.sum(jax.nn.softplus(x)) for x in cls)

  points, _ = yolov8_points([x.shape for x in heads[0]], STRIDES)
  num_priors = points.shape[0]
  scores = jnp.asarray(rng.uniform(0, 1, size=(B, num_priors, NUM_CLASSES)), jnp.float32)
  sides = rng.uniform(4, 100, size=(B, num_priors, 4))
  pred = jnp.asarray(np.concatenate([points - sides[..., :2], points + sides[..., 2:]], -1),
                     jnp.float32)

  def assign(scores, pred, boxes, labels, mask):
    return jaxloss.task_aligned_assign(scores, pred, points, boxes, labels, mask,
                                       num_classes=NUM_CLASSES, topk=10, alpha=0.5, beta=6.0)

  stride = np.concatenate([np.full((IMAGE // s) ** 2, s, np.float32) for s in STRIDES])
  priors = np.concatenate([points - stride[:, None] / 2, stride[:, None], stride[:, None]], -1)

  def simota(scores, pred, boxes, labels, mask):
    return jaxloss.simota_assign(scores, pred, priors, boxes, labels, mask)

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  base = jax.value_and_grad(softplus)
  yolox_grad = jax.value_and_grad(yolox, argnums=(0, 1, 2), has_aux=True)
  programs = [("yolov8_loss value_and_grad", grad, (*heads, *gt)),
              ("softplus fwd+bwd (baseline)", base, (heads[0],)),
              ("task_aligned_assign alone", assign, (scores, pred, *gt)),
              ("yolox_loss value_and_grad", yolox_grad, (heads[0], raw, obj, *gt)),
              ("simota_assign alone", simota, (scores, pred, *gt))]
  built = [compiled(fn, a) for _, fn, a in programs]
  steps = timed([(c, a) for (c, _), (_, _, a) in zip(built, programs, strict=True)], args.steps,
                args.calls)
  base_step = steps[1]

  traces[0] = 0
  jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  for n in np.linspace(0, M, 10).astype(int):
    jax.block_until_ready(jitted(*heads, *ground_truth(rng, np.full(B, n))))
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   "
        f"B={B} image={IMAGE} A={num_priors} C={NUM_CLASSES} M={M} (~{REAL} real)")
  print(f"{'program':28s} {'compile s':>9s} {'(cpu s)':>8s} {'step ms':>8s} "
        f"{'x softplus':>10s} {'temp MiB':>9s} {'total MiB':>9s}")
  for (name, _, _), (c, (wall, cpu)), ts in zip(programs, built, steps, strict=True):
    temp, total = memory_mib(c)
    print(f"{name:28s} {wall:9.2f} {cpu:8.2f} {ts * 1e3:8.2f} {ts / base_step:10.2f} "
          f"{temp:9.1f} {total:9.1f}")
  print(f"compilations over 10 batches with 0..{M} real boxes: {traces[0]}")
  print(f"(step: median of {args.steps} samples of {args.calls} calls, interleaved; compile: "
        "trace + lower + compile; total MiB: temporaries + arguments + outputs)")


if __name__ == "__main__":
  main()
