"""The pattern to copy: a config-built combined loss in a jitted Flax NNX + optax step.

A small MLP reads a feature vector and predicts one box (``xyxy``) and the
logits of 3 classes. Its loss is GIoU on the box plus sigmoid focal loss on the
classes, each built from a config dict by ``jaxloss.build_loss`` with its own
``loss_weight``; padded samples of a batch are masked out with ``where``. The
step is one ``nnx.jit`` function around ``nnx.value_and_grad``, optimised with
``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(...))``.

Run::

  python examples/optax_pipeline.py [--steps 400] [--quick]
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxloss

FEATURES, CLASSES, BATCH = 16, 3, 64

BOX_LOSS = jaxloss.build_loss(dict(type="GIoULoss", loss_weight=2.0))
CLS_LOSS = jaxloss.build_loss(dict(type="FocalLoss", gamma=2.0, alpha=0.25, loss_weight=1.0))


class BoxClassifier(nnx.Module):
  """``[B, FEATURES]`` to a box ``[B, 4]`` (xyxy, positive size) and logits ``[B, CLASSES]``."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(FEATURES, 64, rngs=rngs)
    self.hidden2 = nnx.Linear(64, 64, rngs=rngs)
    self.out = nnx.Linear(64, 4 + CLASSES, rngs=rngs)

  def __call__(self, x):
    y = self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden(x)))))
    centre, size = 32.0 + 16.0 * y[:, :2], 32.0 * nnx.softplus(y[:, 2:4])
    return jnp.concatenate([centre - size / 2, centre + size / 2], -1), y[:, 4:]


def make_batch(rng: np.random.Generator, teacher: np.ndarray):
  """Features, target boxes and labels made by a fixed random ``teacher``; the
  last quarter of the batch is padding (``valid`` False, targets NaN)."""
  x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
  z = x @ teacher
  centre, size = 32.0 + 12.0 * np.tanh(z[:, :2]), 8.0 + 24.0 / (1.0 + np.exp(-z[:, 2:4]))
  boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
  labels = np.argmax(z[:, 4:], -1).astype(np.int32)
  valid = np.arange(BATCH) < 3 * BATCH // 4
  boxes[~valid] = np.nan
  return x, boxes, labels, valid


def loss_fn(model, x, boxes, labels, valid):
  pred_boxes, logits = model(x)
  box = BOX_LOSS(pred_boxes, boxes, where=valid)
  cls = CLS_LOSS(logits, labels, where=valid)
  return box + cls, dict(giou=box, focal=cls)


@nnx.jit
def train_step(model, optimizer, x, boxes, labels, valid):
  (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, boxes, labels,
                                                                   valid)
  optimizer.update(model, grads)
  return loss, parts


@nnx.jit
def evaluate(model, x, boxes, labels, valid):
  pred_boxes, logits = model(x)
  iou = jaxloss.box_iou(pred_boxes, jnp.where(valid[:, None], boxes, 0.0))
  accuracy = jnp.argmax(logits, -1) == labels
  n = valid.sum()
  return jnp.sum(jnp.where(valid, iou, 0.0)) / n, jnp.sum(accuracy & valid) / n


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--quick", action="store_true", help="smoke run (60 steps)")
  args = p.parse_args(argv)
  steps = 60 if args.quick else args.steps

  rng = np.random.default_rng(0)
  teacher = rng.normal(size=(FEATURES, 4 + CLASSES)).astype(np.float32) / np.sqrt(FEATURES)
  model = BoxClassifier(rngs=nnx.Rngs(0))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=1e-4))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  print(f"box loss: {BOX_LOSS!r}\nclass loss: {CLS_LOSS!r}")

  held_out = make_batch(np.random.default_rng(1), teacher)
  before = [float(v) for v in evaluate(model, *held_out)]
  for step in range(steps):
    loss, parts = train_step(model, optimizer, *make_batch(rng, teacher))
    if step % max(steps // 8, 1) == 0 or step == steps - 1:
      print(f"step {step:4d}  loss {float(loss):.4f}  (giou {float(parts['giou']):.4f}, "
            f"focal {float(parts['focal']):.4f})")
  after = [float(v) for v in evaluate(model, *held_out)]
  print(f"held-out box IoU {before[0]:.3f} -> {after[0]:.3f}, "
        f"accuracy {before[1]:.3f} -> {after[1]:.3f}")
  if not np.isfinite(float(loss)):
    raise SystemExit("non-finite loss")
  return dict(loss=float(loss), iou=after[0], accuracy=after[1])


if __name__ == "__main__":
  main()
