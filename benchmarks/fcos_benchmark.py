"""Speed and memory of ``jax.jit(jax.value_and_grad(fcos_loss))`` at a COCO-like size.

Batch 8, 512x512 input, strides 8..128 (levels 64, 32, 16, 8, 4: P = 5456
points), 80 classes, ground truth padded to 100 boxes. Reports compile time,
step time (median of ``--steps`` after warm-up, ``block_until_ready``), the
compiled program's memory (``memory_analysis``), the number of compilations
over 10 batches carrying 0..100 real boxes, and, as the ratio baseline, a
bare ``softplus`` forward + backward over the same classification logits in
the same run (timings interleaved, so that machine load hits all alike). Also
the target assignment alone.

Run: ``python benchmarks/fcos_benchmark.py [--steps 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
import jaxloss as fcos

B, IMAGE, NUM_CLASSES, M = 8, 512, 80, 100
STRIDES = (8, 16, 32, 64, 128)


def head_outputs(rng):
  shapes = [(B, IMAGE // s, IMAGE // s) for s in STRIDES]
  cls = [jnp.asarray(rng.normal(-4, 1, size=(*s, NUM_CLASSES)), jnp.float32) for s in shapes]
  box = [jnp.asarray(rng.uniform(0.5, 8, size=(*s, 4)), jnp.float32) for s in shapes]
  ctr = [jnp.asarray(rng.normal(0, 1, size=(*s, 1)), jnp.float32) for s in shapes]
  return cls, box, ctr


def ground_truth(rng, num_real):
  """Padded ``[B, M]`` ground truth with ``num_real[i]`` real boxes in image i;
  padding rows are garbage (NaN), which must not matter."""
  xy = rng.uniform(0, IMAGE - 16, size=(B, M, 2))
  wh = rng.uniform(8, 320, size=(B, M, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, IMAGE)], -1).astype(np.float32)
  mask = np.arange(M)[None] < np.asarray(num_real)[:, None]
  boxes[~mask] = np.nan
  labels = rng.integers(0, NUM_CLASSES, size=(B, M)).astype(np.int32)
  return jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(mask)


def timed(programs, steps, calls=1):
  """Median seconds per call of each ``(fn, args)``, samples interleaved round-robin;
  a sample is ``calls`` back-to-back calls, synchronised once."""
  for fn, args in programs:
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
  times = [[] for _ in programs]
  for _ in range(steps):
    for (fn, args), ts in zip(programs, times, strict=True):
      t = time.perf_counter()
      for _ in range(calls - 1):
        fn(*args)
      jax.block_until_ready(fn(*args))
      ts.append((time.perf_counter() - t) / calls)
  return [statistics.median(ts) for ts in times]


def compiled(fn, args):
  """The compiled program, and the wall and CPU seconds of tracing + compiling it."""
  t, cpu = time.perf_counter(), time.process_time()
  c = jax.jit(fn).lower(*args).compile()
  return c, (time.perf_counter() - t, time.process_time() - cpu)


def memory_mib(c):
  """Temporary buffers, and temporaries + arguments + outputs, of a compiled program."""
  m = c.memory_analysis()
  if m is None:
    return float("nan"), float("nan")
  mib = 1 << 20
  total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  return m.temp_size_in_bytes / mib, total / mib


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--calls", type=int, default=None,
                      help="calls per timed sample (default 10 on a GPU, else 1)")
  args = parser.parse_args()
  if args.calls is None:
    args.calls = 10 if jax.default_backend() == "gpu" else 1
  rng = np.random.default_rng(0)
  heads = head_outputs(rng)
  gt = ground_truth(rng, rng.integers(0, M + 1, size=B))

  traces = [0]

  def loss(cls, box, ctr, boxes, labels, mask):
    traces[0] += 1
    out = jaxloss.fcos_loss(cls, box, ctr, boxes, labels, mask, num_classes=NUM_CLASSES)
    return out["loss"], out

  def softplus(cls):
    return sum(jnp.sum(jax.nn.softplus(x)) for x in cls)

  pts = fcos.fcos_points([x.shape for x in heads[0]], STRIDES)

  def targets(boxes, labels, mask):
    return fcos.fcos_targets(pts, boxes, labels, mask, num_classes=NUM_CLASSES)

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  base = jax.value_and_grad(softplus)
  programs = [("fcos_loss value_and_grad", grad, (*heads, *gt)),
              ("softplus fwd+bwd (baseline)", base, (heads[0],)),
              ("fcos_targets alone", targets, gt)]
  built = [compiled(fn, a) for _, fn, a in programs]
  steps = timed([(c, a) for (c, _), (_, _, a) in zip(built, programs, strict=True)], args.steps,
                args.calls)
  base_step = steps[1]

  traces[0] = 0
  jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  for n in np.linspace(0, M, 10).astype(int):
    jax.block_until_ready(jitted(*heads, *ground_truth(rng, np.full(B, n))))
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   "
        f"B={B} image={IMAGE} P={sum((IMAGE // s) ** 2 for s in STRIDES)} "
        f"C={NUM_CLASSES} M={M}")
  print(f"{'program':28s} {'compile s':>9s} {'(cpu s)':>8s} {'step ms':>8s} "
        f"{'x softplus':>10s} {'temp MiB':>9s} {'total MiB':>9s}")
  for (name, _, _), (c, (wall, cpu)), ts in zip(programs, built, steps, strict=True):
    temp, total = memory_mib(c)
    print(f"{name:28s} {wall:9.2f} {cpu:8.2f} {ts * 1e3:8.2f} {ts / base_step:10.2f} "
          f"{temp:9.1f} {total:9.1f}")
  print(f"compilations over 10 batches with 0..{M} real boxes: {traces[0]}")
  print(f"(step: median of {args.steps} samples of {args.calls} calls, interleaved; "
        "compile: trace + lower + compile; total MiB: temporaries + arguments + outputs)")


if __name__ == "__main__":
  main()
