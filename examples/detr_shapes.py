"""A tiny DETR-style set predictor trained with ``jaxloss.detr_loss``, evaluated by COCO mAP.

The synthetic shapes data of ``fcos_shapes.py`` (64x64 images, 1 to 4
rectangles and ellipses, ground truth padded to ``[B, 6]`` with a mask). A small
CNN (stride 8, an 8x8 grid of features) and one transformer encoder layer feed
a few transformer decoder layers over learned queries. Each query carries a
learned reference box; every decoder layer predicts class logits and a box
(normalised ``cxcywh``) as a refinement of the previous layer's box (as
Deformable-DETR's iterative refinement and DAB-DETR's anchor queries, which
make set prediction converge in minutes rather than days). The loss is
``jaxloss.detr_loss``: Hungarian matching of every layer's queries inside
``jit`` (the intermediate layers stacked as ``aux_*``), then the class, L1 and
GIoU terms; one compilation serves any number of objects. The class loss is
Deformable-DETR's sigmoid focal loss (``--class-loss softmax``: DETR's softmax
with ``eos_coef``, which learns more slowly here). There is no NMS: the best
(query, class) scores are the detections, scored with pycocotools'
``COCOeval`` on a held-out set.

Run::

  python examples/detr_shapes.py            # a few minutes on 2 CPU cores
  python examples/detr_shapes.py --quick    # smoke run, under a minute
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

# -------------------------------------------------------------------------- model


def sine_embedding(coords, dim: int, temperature: float = 20.0):
  """``[..., k]`` coordinates in ``[0, 1]`` to ``[..., k * dim]`` sines and cosines."""
  freqs = temperature ** (2 * (jnp.arange(dim // 2) / dim))
  angles = coords[..., None] * 2 * jnp.pi / freqs
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)
  return emb.reshape(coords.shape[:-1] + (-1,))


def inverse_sigmoid(x, eps: float = 1e-4):
  x = jnp.clip(x, eps, 1 - eps)
  return jnp.log(x / (1 - x))


class MLP(nnx.Module):
  def __init__(self, dims: tuple[int, ...], *, rngs: nnx.Rngs, last_init=None):
    inits = [{}] * (len(dims) - 2) + [last_init or {}]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, **init)
                            for a, b, init in zip(dims[:-1], dims[1:], inits, strict=True)])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


class EncoderLayer(nnx.Module):
  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.ffn = MLP((dim, 2 * dim, dim), rngs=rngs)
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)

  def __call__(self, x, pos):
    x = self.norm1(x + self.attn(x + pos, x + pos, x))
    return self.norm2(x + self.ffn(x))


class DecoderLayer(nnx.Module):
  """Post-norm DETR decoder layer: query self-attention, cross-attention, FFN."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.self_attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.cross_attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.ffn = MLP((dim, 2 * dim, dim), rngs=rngs)
    self.norms = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(3)])

  def __call__(self, tgt, query_pos, memory, memory_pos):
    q = tgt + query_pos
    tgt = self.norms[0](tgt + self.self_attn(q, q, tgt))
    tgt = self.norms[1](tgt + self.cross_attn(tgt + query_pos, memory + memory_pos, memory))
    return self.norms[2](tgt + self.ffn(tgt))


class DETR(nnx.Module):
  """CNN (stride 8), one encoder layer, ``layers`` decoder layers over ``queries`` queries.

  Returns per decoder layer (stacked ``[L, ...]``) class logits ``[B, Q, C + 1]``
  (softmax; the last is "no object") or ``[B, Q, C]`` (focal) and boxes
  ``[B, Q, 4]``, normalised ``cxcywh``.
  """

  def __init__(self, num_classes: int, dim: int = 64, queries: int = 16, layers: int = 3,
               heads: int = 4, class_loss: str = "focal", *, rngs: nnx.Rngs):
    self.dim = dim
    self.stem = ConvGN(3, dim // 4, 2, rngs=rngs)        # stride 2
    self.c2 = ConvGN(dim // 4, dim // 2, 2, rngs=rngs)   # stride 4
    self.c3 = ConvGN(dim // 2, dim, 2, rngs=rngs)        # stride 8
    self.c3b = ConvGN(dim, dim, rngs=rngs)
    self.encoder = EncoderLayer(dim, heads, rngs=rngs)
    self.decoder = nnx.List([DecoderLayer(dim, heads, rngs=rngs) for _ in range(layers)])
    self.query = nnx.Param(jax.random.normal(rngs.params(), (queries, dim)) * 0.1)
    # reference boxes spread over the image (logits of cx, cy uniform; w, h about 0.2)
    ref = jnp.concatenate([jax.random.uniform(rngs.params(), (queries, 2), minval=0.1,
                                              maxval=0.9), jnp.full((queries, 2), 0.2)], -1)
    self.reference = nnx.Param(inverse_sigmoid(ref))
    self.query_pos = MLP((2 * dim, dim, dim), rngs=rngs)
    if class_loss == "softmax":
      self.cls = nnx.Linear(dim, num_classes + 1, rngs=rngs)
    else:  # sigmoid scores start at 0.01, as Deformable-DETR's
      prior = nnx.initializers.constant(-np.log((1 - 0.01) / 0.01))
      self.cls = nnx.Linear(dim, num_classes, rngs=rngs, bias_init=prior)
    zeros = dict(kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros)
    self.box = MLP((dim, dim, dim, 4), rngs=rngs, last_init=zeros)

  def memory(self, images):
    f = self.c3b(self.c3(self.c2(self.stem(images))))
    b, h, w, c = f.shape
    yy, xx = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
    pos = sine_embedding(jnp.stack([xx, yy], -1), c // 2).reshape(1, h * w, c)
    f = f.reshape(b, h * w, c)
    return self.encoder(f, pos), pos

  def __call__(self, images):
    memory, memory_pos = self.memory(images)
    b = images.shape[0]
    tgt = jnp.broadcast_to(self.query[...], (b,) + self.query.shape)
    ref = jnp.broadcast_to(jax.nn.sigmoid(self.reference[...]), (b,) + self.reference.shape)
    cls, boxes = [], []
    for layer in self.decoder:
      query_pos = self.query_pos(sine_embedding(ref[..., :2], self.dim))
      tgt = layer(tgt, query_pos, memory, memory_pos)
      box = jax.nn.sigmoid(inverse_sigmoid(ref) + self.box(tgt))
      cls.append(self.cls(tgt))
      boxes.append(box)
      ref = jax.lax.stop_gradient(box)  # each layer refines the previous layer's box
    return jnp.stack(cls), jnp.stack(boxes)


# ----------------------------------------------------------------------- training


@dataclasses.dataclass
class Settings:
  size: int = 64
  train: int = 1024
  test: int = 128
  batch: int = 16
  steps: int = 2000
  dim: int = 64
  queries: int = 16
  layers: int = 3
  class_loss: str = "focal"
  lr: float = 1e-3
  weight_decay: float = 1e-4
  top_k: int = 32
  seed: int = 0


def to_cxcywh(boxes: np.ndarray, size: int) -> np.ndarray:
  """``xyxy`` pixels to normalised ``cxcywh``."""
  xy = (boxes[..., :2] + boxes[..., 2:]) / 2
  wh = boxes[..., 2:] - boxes[..., :2]
  return np.concatenate([xy, wh], -1) / size


def detr_objective(model, images, boxes, labels, mask, class_loss: str):
  cls, box = model(images)
  # Deformable-DETR weighs its focal class loss (and cost) 2, DETR its softmax CE 1
  weight = 2.0 if class_loss == "focal" else 1.0
  out = jaxloss.detr_loss(cls[-1], box[-1], boxes, labels, mask, num_classes=len(CLASSES),
                          class_loss=class_loss, cls_weight=weight, class_cost=weight,
                          aux_cls_logits=cls[:-1], aux_box_preds=box[:-1])
  return out["loss"], out


@functools.partial(nnx.jit, static_argnames="class_loss")
def train_step(model, optimizer, images, boxes, labels, mask, class_loss: str):
  grad_fn = nnx.value_and_grad(detr_objective, has_aux=True)
  (_, parts), grads = grad_fn(model, images, boxes, labels, mask, class_loss)
  optimizer.update(model, grads)
  return parts


@functools.partial(nnx.jit, static_argnames=("top_k", "class_loss"))
def detect(model, images, top_k: int, class_loss: str):
  """The last layer's ``top_k`` (query, class) pairs per image, boxes as ``xyxy`` pixels.

  Softmax (DETR's post-processing): each query's most likely object class, its
  probability without "no object"; focal (Deformable-DETR's): the best of all
  ``Q x C`` sigmoid scores.
  """
  cls, box = model(images)
  if class_loss == "softmax":
    probs = jax.nn.softmax(cls[-1], -1)[..., :-1]
    probs = jnp.where(probs == jnp.max(probs, -1, keepdims=True), probs, 0.0)
  else:
    probs = jax.nn.sigmoid(cls[-1])
  num_classes = probs.shape[-1]
  scores, index = jax.lax.top_k(probs.reshape(probs.shape[0], -1), min(top_k, probs[0].size))
  labels, index = index % num_classes, index // num_classes
  box = jnp.take_along_axis(box[-1], index[..., None], axis=1) * images.shape[1]
  xyxy = jnp.concatenate([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2], -1)
  return jnp.clip(xyxy, 0, images.shape[1]), scores, labels


# ---------------------------------------------------------------------------- CLI


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=None, help="training steps")
  p.add_argument("--quick", action="store_true", help="small smoke run (< 1 min)")
  p.add_argument("--class-loss", choices=("focal", "softmax"), default=None,
                 help="Deformable-DETR's sigmoid focal (default) or DETR's softmax + eos_coef")
  p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
  p.add_argument("--json", default=None, help="write the scores to this JSON file")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  # XLA's RngBitGenerator: threefry's initialisers compile once per parameter shape, which
  # on a busy 2-core CPU took 20 s of this script's start-up; the results do not depend on it
  jax.config.update("jax_default_prng_impl", "rbg")
  cfg = (Settings(train=64, test=32, batch=8, steps=20, dim=32, queries=8, layers=2)
         if args.quick else Settings())
  if args.steps is not None:
    cfg.steps = args.steps
  if args.class_loss is not None:
    cfg.class_loss = args.class_loss
  wall = time.perf_counter()
  train_data = make_dataset(cfg.seed, cfg.train, cfg.size)
  test_data = make_dataset(cfg.seed + 1000, cfg.test, cfg.size)
  train_data["boxes"] = to_cxcywh(train_data["boxes"], cfg.size)
  print(f"data: {cfg.train} train / {cfg.test} test images {cfg.size}x{cfg.size}, "
        f"{int(test_data['mask'].sum())} test objects; {cfg.queries} queries, "
        f"{cfg.layers} decoder layers of width {cfg.dim}, {cfg.class_loss} class loss")

  model = DETR(len(CLASSES), cfg.dim, cfg.queries, cfg.layers, class_loss=cfg.class_loss,
               rngs=nnx.Rngs(cfg.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(100, cfg.steps // 10),
                                                cfg.steps)
  tx = optax.chain(optax.clip_by_global_norm(0.1),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(cfg.seed + 1)
  keys = ("images", "boxes", "labels", "mask")
  bar = tqdm(range(cfg.steps), desc="detr", disable=args.no_progress, ncols=100,
             mininterval=0.5)
  for step in bar:
    idx = rng.choice(cfg.train, cfg.batch, replace=False)
    parts = train_step(model, optimizer, *(train_data[k][idx] for k in keys), cfg.class_loss)
    if step == 0:
      jax.block_until_ready(parts)
      start = time.perf_counter()
    if step % 50 == 0 or step == cfg.steps - 1:
      bar.set_postfix({k: f"{float(parts[k]):.3f}" for k in ("cls_loss", "bbox_loss",
                                                               "giou_loss")})
  rate = (cfg.steps - 1) / max(time.perf_counter() - start, 1e-9)
  print(f"trained {cfg.steps} steps ({rate:.1f} steps/s after compilation); final loss "
        f"{float(parts['loss']):.3f} over {cfg.layers} layers (last layer: cls "
        f"{float(parts['cls_loss']):.3f}, L1 {float(parts['bbox_loss']):.3f}, "
        f"GIoU {float(parts['giou_loss']):.3f})")

  gt = coco_ground_truth(test_data)
  detections = coco_detections(model, test_data["images"], cfg, use_nms=False,
                               detect_fn=functools.partial(detect, class_loss=cfg.class_loss))
  stats = coco_map(gt, detections)
  wall = time.perf_counter() - wall
  print(f"\nheld-out COCO bbox mAP@[.5:.95] = {stats[0]:.3f}, AP50 = {stats[1]:.3f}, "
        f"AP75 = {stats[2]:.3f} ({len(detections)} detections, no NMS); {wall:.0f} s wall")
  if args.quick:
    print("(--quick: 20 training steps of a smaller model, a smoke run; its mAP is near 0 by "
          "design, not a result)")
  result = dict(map=float(stats[0]), ap50=float(stats[1]), ap75=float(stats[2]),
                class_loss=cfg.class_loss, steps=cfg.steps, wall_s=round(wall, 1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"detr": result}, f, indent=2)
  return result


if __name__ == "__main__":
  main()
