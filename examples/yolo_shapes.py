"""Tiny anchor-free YOLOv8 and YOLOX heads trained with jaxloss, evaluated by COCO mAP.

The synthetic shapes data of ``fcos_shapes.py`` (64x64 images, 1 to 4
rectangles and ellipses, ground truth padded to ``[B, 6]`` with a mask) and
its backbone shape: a small CNN with an FPN-lite neck (strides 4, 8 and 16)
and a decoupled head shared over levels. Two heads, each trained from scratch
with its whole loss, targets assigned inside ``jit``:

* ``yolov8``: class logits and, per box side, ``reg_max`` distance bins;
  ``jaxloss.yolov8_loss`` (task-aligned assigner, BCE on the soft scores,
  CIoU and DFL). Decoded as the bins' expected distance around the cell centre;
  score ``sigmoid(cls)``.
* ``yolox``: class, ``(dx, dy, log w, log h)`` in strides and objectness
  logits; ``jaxloss.yolox_loss`` (SimOTA, objectness BCE, IoU loss). Decoded
  around the cell corner; score ``sigmoid(cls) * sigmoid(obj)``.

Both: top-k detections per image, class-wise NMS in numpy, pycocotools'
``COCOeval`` on a held-out set.

Run::

  python examples/yolo_shapes.py                  # both heads, a few minutes on 2 CPU cores
  python examples/yolo_shapes.py --head yolox     # one head
  python examples/yolo_shapes.py --quick          # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from fcos_shapes import CLASSES, ConvGN, coco_detections, coco_ground_truth, coco_map, make_dataset
from flax import nnx
from tqdm import tqdm

import jaxloss

STRIDES = (4, 8, 16)
HEADS = ("yolov8", "yolox")

# -------------------------------------------------------------------------- model


class YOLO(nnx.Module):
  """Backbone (strides 2..16), FPN-lite neck and a decoupled head shared over levels.

  ``head="yolov8"`` returns per level class logits ``[B, H, W, C]`` and bin logits
  ``[B, H, W, 4 * reg_max]``; ``head="yolox"`` class logits, ``(dx, dy, log w, log h)``
  ``[B, H, W, 4]`` and objectness logits ``[B, H, W, 1]``.
  """

  def __init__(self, head: str, num_classes: int, width: int = 32, reg_max: int = 16, *,
               rngs: nnx.Rngs):
    w = width
    self.head = head
    self.stem = ConvGN(3, w // 2, 2, rngs=rngs)                       # stride 2
    self.c2 = ConvGN(w // 2, w, 2, rngs=rngs)                         # stride 4
    self.c3 = ConvGN(w, 2 * w, 2, rngs=rngs)                          # stride 8
    self.c4 = ConvGN(2 * w, 2 * w, 2, rngs=rngs)                      # stride 16
    self.lateral = nnx.List([nnx.Conv(c, w, (1, 1), rngs=rngs) for c in (w, 2 * w, 2 * w)])
    self.smooth = nnx.List([nnx.Conv(w, w, (3, 3), rngs=rngs) for _ in STRIDES])
    self.cls_tower = ConvGN(w, w, rngs=rngs)
    self.reg_tower = ConvGN(w, w, rngs=rngs)
    prior = nnx.initializers.constant(-np.log((1 - 0.01) / 0.01))
    self.cls = nnx.Conv(w, num_classes, (3, 3), rngs=rngs, bias_init=prior)
    self.box = nnx.Conv(w, 4 * reg_max if head == "yolov8" else 4, (3, 3), rngs=rngs)
    if head == "yolox":
      self.obj = nnx.Conv(w, 1, (3, 3), rngs=rngs, bias_init=prior)

  def features(self, x):
    c2 = self.c2(self.stem(x))
    c3 = self.c3(c2)
    c4 = self.c4(c3)
    up = lambda x: jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)
    p4 = self.lateral[2](c4)
    p3 = self.lateral[1](c3) + up(p4)
    p2 = self.lateral[0](c2) + up(p3)
    return [s(p) for s, p in zip(self.smooth, (p2, p3, p4), strict=True)]

  def __call__(self, x):
    cls, box, obj = [], [], []
    for f in self.features(x):
      c, r = self.cls_tower(f), self.reg_tower(f)
      cls.append(self.cls(c))
      if self.head == "yolov8":
        box.append(self.box(r))
      else:
        raw = self.box(r)  # log sizes clipped so that exp never overflows
        box.append(jnp.concatenate([raw[..., :2], jnp.clip(raw[..., 2:], -6.0, 6.0)], -1))
        obj.append(self.obj(r))
    return (cls, box) if self.head == "yolov8" else (cls, box, obj)


# ----------------------------------------------------------------------- training


@dataclasses.dataclass
class Settings:
  size: int = 64
  train: int = 1024
  test: int = 128
  batch: int = 16
  steps: int = 1500
  width: int = 32
  reg_max: int = 16
  lr: float = 2e-3
  weight_decay: float = 1e-4
  top_k: int = 50
  seed: int = 0


def objective(model, images, boxes, labels, mask, reg_max: int):
  if model.head == "yolov8":
    cls, bins = model(images)
    out = jaxloss.yolov8_loss(cls, bins, boxes, labels, mask, num_classes=len(CLASSES),
                              strides=STRIDES, reg_max=reg_max)
  else:
    cls, box, obj = model(images)
    out = jaxloss.yolox_loss(cls, box, obj, boxes, labels, mask, num_classes=len(CLASSES),
                             strides=STRIDES)
  return out["loss"], out


@functools.partial(nnx.jit, static_argnames="reg_max")
def train_step(model, optimizer, images, boxes, labels, mask, reg_max: int):
  grad_fn = nnx.value_and_grad(objective, has_aux=True)
  (_, parts), grads = grad_fn(model, images, boxes, labels, mask, reg_max)
  optimizer.update(model, grads)
  return parts


def grid(feature_shapes, offset: float):
  """``[A, 2]`` cell positions ``((j + offset) s, (i + offset) s)`` and ``[A]`` strides,
  levels concatenated, cells row-major (``offset`` 0.5: YOLOv8's centres; 0: YOLOX's
  corners)."""
  points, strides = [], []
  for (_, h, w, _), s in zip(feature_shapes, STRIDES, strict=True):
    ys, xs = np.meshgrid(np.arange(h) + offset, np.arange(w) + offset, indexing="ij")
    points.append(np.stack([xs.ravel(), ys.ravel()], -1) * s)
    strides.append(np.full(h * w, s))
  return np.concatenate(points).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode(model, images):
  """All predictions of every cell: boxes ``[B, A, 4]`` xyxy pixels, scores ``[B, A, C]``."""
  outputs = model(images)
  flat = lambda xs: jnp.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in xs], 1)
  shapes = [c.shape for c in outputs[0]]
  if model.head == "yolov8":
    cls, bins = outputs
    points, stride = grid(shapes, 0.5)
    bins = flat(bins).reshape(bins[0].shape[0], -1, 4, bins[0].shape[-1] // 4)
    ltrb = jnp.sum(jax.nn.softmax(bins, -1) * jnp.arange(bins.shape[-1]), -1) * stride[:, None]
    boxes = jnp.concatenate([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)
    return boxes, jax.nn.sigmoid(flat(cls))
  cls, box, obj = outputs
  corners, stride = grid(shapes, 0.0)
  box = flat(box)
  centre = corners + box[..., :2] * stride[:, None]
  size = jnp.exp(box[..., 2:]) * stride[:, None]
  boxes = jnp.concatenate([centre - size / 2, centre + size / 2], -1)
  return boxes, jax.nn.sigmoid(flat(cls)) * jax.nn.sigmoid(flat(obj))


@functools.partial(nnx.jit, static_argnames="top_k")
def detect(model, images, top_k: int):
  """Top-k detections per image: boxes ``[B, k, 4]`` xyxy, scores, labels."""
  boxes, scores = decode(model, images)
  num_classes = scores.shape[-1]
  top, index = jax.lax.top_k(scores.reshape(scores.shape[0], -1), top_k)
  picked = jnp.take_along_axis(boxes, (index // num_classes)[..., None], axis=1)
  return jnp.clip(picked, 0, images.shape[1]), top, index % num_classes


def train_and_score(head: str, cfg: Settings, train_data, test_data, gt,
                    progress: bool) -> dict:
  model = YOLO(head, len(CLASSES), cfg.width, cfg.reg_max, rngs=nnx.Rngs(cfg.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(100, cfg.steps // 10),
                                                cfg.steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(cfg.seed + 1)
  keys = ("images", "boxes", "labels", "mask")
  terms = ("cls_loss", "box_loss", "dfl_loss") if head == "yolov8" else (
      "cls_loss", "box_loss", "obj_loss")
  wall = time.perf_counter()
  bar = tqdm(range(cfg.steps), desc=head, disable=not progress, ncols=100, mininterval=0.5)
  for step in bar:
    idx = rng.choice(cfg.train, cfg.batch, replace=False)
    parts = train_step(model, optimizer, *(train_data[k][idx] for k in keys), cfg.reg_max)
    if step == 0:
      jax.block_until_ready(parts)
      start = time.perf_counter()
    if step % 50 == 0 or step == cfg.steps - 1:
      bar.set_postfix({k: f"{float(parts[k]):.3f}" for k in terms})
  rate = (cfg.steps - 1) / max(time.perf_counter() - start, 1e-9)
  print(f"{head}: trained {cfg.steps} steps ({rate:.1f} steps/s after compilation); final loss "
        f"{float(parts['loss']):.3f} (" + ", ".join(f"{k.split('_')[0]} {float(parts[k]):.3f}"
                                                  for k in terms)
        + f"; {float(parts['num_pos']):.1f} positives per batch)")
  detections = coco_detections(model, test_data["images"], cfg, use_nms=True, detect_fn=detect)
  stats = coco_map(gt, detections)
  wall = time.perf_counter() - wall
  print(f"{head}: held-out COCO bbox mAP@[.5:.95] = {stats[0]:.3f}, AP50 = {stats[1]:.3f}, "
        f"AP75 = {stats[2]:.3f} ({len(detections)} detections, NMS 0.5); {wall:.0f} s wall\n")
  return dict(map=float(stats[0]), ap50=float(stats[1]), ap75=float(stats[2]),
              steps=cfg.steps, wall_s=round(wall, 1))


# ---------------------------------------------------------------------------- CLI


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--head", choices=(*HEADS, "both"), default="both", help="which head(s)")
  p.add_argument("--steps", type=int, default=None, help="training steps per head")
  p.add_argument("--quick", action="store_true", help="small smoke run (< 1 min)")
  p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
  p.add_argument("--json", default=None, help="write the scores to this JSON file")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  # XLA's RngBitGenerator: threefry's initialisers compile once per parameter shape, which
  # on a busy 2-core CPU took most of the start-up; the results do not depend on it
  jax.config.update("jax_default_prng_impl", "rbg")
  cfg = Settings(train=64, test=32, batch=8, steps=20, width=16) if args.quick else Settings()
  if args.steps is not None:
    cfg.steps = args.steps
  train_data = make_dataset(cfg.seed, cfg.train, cfg.size)
  test_data = make_dataset(cfg.seed + 1000, cfg.test, cfg.size)
  print(f"data: {cfg.train} train / {cfg.test} test images {cfg.size}x{cfg.size}, "
        f"{int(test_data['mask'].sum())} test objects; levels strides {STRIDES}\n")
  gt = coco_ground_truth(test_data)
  heads = HEADS if args.head == "both" else (args.head,)
  results = {h: train_and_score(h, cfg, train_data, test_data, gt, not args.no_progress)
             for h in heads}
  for h, r in results.items():
    print(f"{h:7s} mAP@[.5:.95] {r['map']:.3f}  AP50 {r['ap50']:.3f}  AP75 {r['ap75']:.3f}")
  if args.quick:
    print("(--quick: 20 training steps of a narrower model, a smoke run; its mAP is near 0 by "
          "design, not a result)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
