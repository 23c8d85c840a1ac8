"""Which loss for imbalanced segmentation? Six losses, one U-Net, measured.

A synthetic, deterministic microscopy-like data set (grayscale images with
~80% background, ~10% thin curvy "ER", ~7% elongated "mito", ~3% small round
"nuc", blurred and noisy) is generated in code. The same small Flax NNX U-Net
is trained from the same initialisation, on the same batches, with optax AdamW,
once per loss, every loss built by ``jaxloss.build_loss`` from its config dict:
``ce``, ``weighted_ce``, ``focal``, ``dice``, ``focal_dice`` and ``tversky``.
Per-class precision, recall, IoU, mean IoU, over-prediction and training speed
are then measured on a held-out set, printed as a table and written, with a
plot of the loss curves and per-class IoU, to ``--out``.

Run::

  python examples/imbalanced_segmentation.py            # a few minutes on 2 CPU cores
  python examples/imbalanced_segmentation.py --quick    # smoke run (ce, focal_dice), < 1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jaxloss

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLASSES = ("background", "ER", "mito", "nuc")
NUM_CLASSES = len(CLASSES)
LOSSES = ("ce", "weighted_ce", "focal", "dice", "focal_dice", "tversky")
QUICK_LOSSES = ("ce", "focal_dice")  # each loss is one ~10 s compilation on a CPU


def loss_config(name: str) -> dict:
  """The ``build_loss`` config of each compared loss (quick-reference keywords)."""
  configs = {
      "ce": dict(type="ce", num_classes=NUM_CLASSES),
      "weighted_ce": dict(type="weighted_ce", num_classes=NUM_CLASSES,
                          use_class_weighting=True),
      "focal": dict(type="focal", num_classes=NUM_CLASSES, focal_gamma=2.0),
      "dice": dict(type="dice", num_classes=NUM_CLASSES, dice_smooth=1.0),
      "focal_dice": dict(type="focal_dice", num_classes=NUM_CLASSES, focal_gamma=2.0,
                         focal_weight=0.5, dice_weight=0.5, dice_smooth=1.0),
      "tversky": dict(type="tversky", num_classes=NUM_CLASSES, tversky_alpha=0.3,
                      tversky_beta=0.7),
  }
  return configs[name]


# --------------------------------------------------------------------------- data


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  return yy, xx


def curve_mask(rng: np.random.Generator, size: int) -> np.ndarray:
  """A thin smooth random curve (ER tubule): a walk with a slowly turning heading,
  reflected at the image border, about 1.5 pixels wide."""
  n = 5 * size
  heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.06, n))
  step = 0.25 * np.stack([np.sin(heading), np.cos(heading)], 1)
  path = rng.uniform(0, size, 2) + np.cumsum(step, 0)
  normal = np.stack([step[:, 1], -step[:, 0]], 1) / 0.25
  half = rng.uniform(0.4, 0.9)
  mask = np.zeros((size, size), bool)
  for offset in (-half, 0.0, half):
    p = np.mod(path + offset * normal, 2 * size)
    p = np.clip(np.where(p >= size, 2 * size - p, p), 0, size - 1e-3).astype(np.int32)
    mask[p[:, 0], p[:, 1]] = True
  return mask


def ellipse_mask(rng: np.random.Generator, size: int, a: float, b: float) -> np.ndarray:
  """A rotated filled ellipse of semi-axes ``a`` >= ``b`` at a random place."""
  cy, cx = rng.uniform(2, size - 2, 2)
  theta = rng.uniform(0, np.pi)
  yy, xx = _grid(size)
  u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
  v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
  return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _blur(x: np.ndarray) -> np.ndarray:
  """Separable [1, 2, 1] / 4 blur, a crude point-spread function."""
  k = np.array([0.25, 0.5, 0.25], np.float32)
  p = np.pad(x, 1, mode="edge")
  x = k[0] * p[:-2, 1:-1] + k[1] * p[1:-1, 1:-1] + k[2] * p[2:, 1:-1]
  p = np.pad(x, 1, mode="edge")
  return k[0] * p[1:-1, :-2] + k[1] * p[1:-1, 1:-1] + k[2] * p[1:-1, 2:]


def make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """One image ``[size, size]`` in [0, 1]-ish and its labels (0 bg, 1 ER, 2 mito, 3 nuc)."""
  s = size / 48.0
  labels = np.zeros((size, size), np.int32)
  image = np.full((size, size), 0.15, np.float32)
  objects = [(1, lambda: curve_mask(rng, size), rng.integers(1, 4), 0.55),
             (2, lambda: ellipse_mask(rng, size, rng.uniform(3.0, 5.5) * s,
                                      rng.uniform(1.2, 2.0) * s), rng.integers(5, 11), 0.7),
             (3, lambda: ellipse_mask(rng, size, *(2 * [rng.uniform(1.6, 2.6) * s])),
              rng.integers(3, 8), 0.85)]
  for cls, draw, count, brightness in objects:
    for _ in range(count):
      m = draw()
      labels[m] = cls
      image[m] = brightness + rng.normal(0.0, 0.08)
  illumination = 1.0 + 0.3 * np.sin(_grid(size)[rng.integers(2)] / size * np.pi
                                    + rng.uniform(0, np.pi))
  image = _blur(image) * illumination + rng.normal(0.0, 0.1, image.shape)
  return image.astype(np.float32), labels


def make_dataset(seed: int, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """``n`` samples: images ``[n, size, size, 1]`` float32, labels ``[n, size, size]``."""
  rng = np.random.default_rng(seed)
  images, labels = zip(*(make_sample(rng, size) for _ in range(n)), strict=True)
  return np.stack(images)[..., None], np.stack(labels)


# -------------------------------------------------------------------------- model


class ConvBlock(nnx.Module):
  """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.norm1 = nnx.GroupNorm(cout, num_groups=4, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.norm2 = nnx.GroupNorm(cout, num_groups=4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.norm1(self.conv1(x)))
    return nnx.relu(self.norm2(self.conv2(x)))


class UNet(nnx.Module):
  """A two-level U-Net: ``[B, H, W, 1]`` images to ``[B, H, W, num_classes]`` logits."""

  def __init__(self, num_classes: int, width: int = 16, *, rngs: nnx.Rngs):
    w = width
    self.enc1 = ConvBlock(1, w, rngs=rngs)
    self.enc2 = ConvBlock(w, 2 * w, rngs=rngs)
    self.mid = ConvBlock(2 * w, 4 * w, rngs=rngs)
    self.up2 = nnx.ConvTranspose(4 * w, 2 * w, (2, 2), strides=(2, 2), rngs=rngs)
    self.dec2 = ConvBlock(4 * w, 2 * w, rngs=rngs)
    self.up1 = nnx.ConvTranspose(2 * w, w, (2, 2), strides=(2, 2), rngs=rngs)
    self.dec1 = ConvBlock(2 * w, w, rngs=rngs)
    self.head = nnx.Conv(w, num_classes, (1, 1), rngs=rngs)

  def __call__(self, x):
    pool = lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))
    e1 = self.enc1(x)
    e2 = self.enc2(pool(e1))
    m = self.mid(pool(e2))
    d2 = self.dec2(jnp.concatenate([self.up2(m), e2], -1))
    d1 = self.dec1(jnp.concatenate([self.up1(d2), e1], -1))
    return self.head(d1)


# ----------------------------------------------------------------------- training


@dataclasses.dataclass
class Settings:
  size: int = 48
  train: int = 384
  test: int = 128
  batch: int = 8
  steps: int = 600
  width: int = 8
  lr: float = 1e-2
  weight_decay: float = 1e-4
  seed: int = 0


def make_train_step(loss_fn):
  """A jitted AdamW step of ``model`` on ``loss_fn(logits, labels)``; compiled once."""

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    def objective(m):
      return loss_fn(m(images), labels)

    loss, grads = nnx.value_and_grad(objective)(model)
    optimizer.update(model, grads)
    return loss

  return train_step


@nnx.jit
def predict(model, images):
  return jnp.argmax(model(images), -1)


def batches(cfg: Settings, n: int):
  """The same deterministic batch order for every loss."""
  rng = np.random.default_rng(cfg.seed + 1)
  order = np.concatenate([rng.permutation(n) for _ in range(cfg.steps * cfg.batch // n + 1)])
  return order[: cfg.steps * cfg.batch].reshape(cfg.steps, cfg.batch)


def train(name: str, cfg: Settings, data, *, progress: bool = True) -> dict:
  """Trains a fresh U-Net with loss ``name``; returns curve, model and speed."""
  config = loss_config(name)
  loss = jaxloss.build_loss(config)
  print_config(name, config, loss)
  model = UNet(NUM_CLASSES, cfg.width, rngs=nnx.Rngs(cfg.seed))
  optimizer = nnx.Optimizer(model, optax.adamw(cfg.lr, weight_decay=cfg.weight_decay),
                            wrt=nnx.Param)
  train_step = make_train_step(loss)
  images, labels = data
  order = batches(cfg, len(images))
  start = time.perf_counter()
  history = [train_step(model, optimizer, images[order[0]], labels[order[0]])]
  jax.block_until_ready(history[0])
  compiled = time.perf_counter()
  bar = tqdm(range(1, cfg.steps), desc=f"{name:>11}", disable=not progress, ncols=90,
             mininterval=0.5)
  for step in bar:
    history.append(train_step(model, optimizer, images[order[step]], labels[order[step]]))
    if step % 25 == 0:
      bar.set_postfix(loss=f"{float(history[-1]):.4f}")
  history = np.asarray(jax.device_get(jnp.stack(history)))
  done = time.perf_counter()
  return dict(model=model, history=history, compile_s=compiled - start,
              steps_per_s=(cfg.steps - 1) / max(done - compiled, 1e-9))


def print_config(name: str, config: dict, loss) -> None:
  print(f"\n=== Loss Configuration: {name} ===")
  for key, value in config.items():
    print(f"  {key:<20} {value}")
  print(f"  {'built':<20} {loss!r}")


# ------------------------------------------------------------------------ metrics


def confusion(model, images: np.ndarray, labels: np.ndarray, batch: int) -> np.ndarray:
  """``[C, C]`` counts, rows true class, columns predicted class."""
  counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  for i in range(0, len(images) - batch + 1, batch):
    pred = np.asarray(predict(model, images[i:i + batch]))
    true = labels[i:i + batch]
    counts += np.bincount((true * NUM_CLASSES + pred).ravel(),
                          minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
  return counts


def class_metrics(counts: np.ndarray) -> dict:
  """Per-class precision, recall, IoU and over-prediction (predicted / true pixels)."""
  tp = np.diag(counts).astype(np.float64)
  predicted, true = counts.sum(0), counts.sum(1)
  div = lambda a, b: np.where(b > 0, a / np.maximum(b, 1), np.nan)
  precision, recall = div(tp, predicted), div(tp, true)
  iou = div(tp, predicted + true - tp)
  return dict(precision=precision.tolist(), recall=recall.tolist(), iou=iou.tolist(),
              over_prediction=div(predicted, true).tolist(),
              mean_iou=float(np.nanmean(iou)), foreground_mean_iou=float(np.nanmean(iou[1:])))


# ------------------------------------------------------------------------- report


def _metric(value: float, width: int, spec: str = ".3f") -> str:
  """A table cell; an undefined metric (NaN) prints as '-' (see the footnote)."""
  return f"{'-' if np.isnan(value) else format(value, spec):>{width}}"


def print_tables(results: dict, quick: bool = False) -> None:
  names = list(results)
  if quick:
    print("\n(--quick: a smoke run of a few steps; these scores are not results)")
  print("\nHeld-out results (pixels pooled over the test set)\n")
  head = f"{'loss':<12}{'mIoU':>7}{'fg mIoU':>9}" + "".join(f"{c + ' IoU':>16}" for c in CLASSES)
  print(head + f"{'steps/s':>9}")
  print("-" * (len(head) + 9))
  for n in names:
    r = results[n]
    print(f"{n:<12}{r['mean_iou']:>7.3f}{r['foreground_mean_iou']:>9.3f}"
          + "".join(_metric(v, 16) for v in r["iou"]) + f"{r['steps_per_s']:>9.1f}")
  print(f"\n{'loss':<12}{'class':<12}{'precision':>10}{'recall':>8}{'IoU':>7}"
        f"{'over-pred':>11}")
  print("-" * 60)
  for n in names:
    r = results[n]
    for c, cls in enumerate(CLASSES):
      print(f"{n if c == 0 else '':<12}{cls:<12}{_metric(r['precision'][c], 10)}"
            f"{_metric(r['recall'][c], 8)}{_metric(r['iou'][c], 7)}"
            f"{_metric(r['over_prediction'][c], 11, '.2f')}")
  print("\nover-pred = predicted pixels / true pixels = recall / precision "
        "(> 1: the class is over-predicted)")
  print("- : undefined (precision of a class the model never predicts; recall and IoU of a "
        "class absent from the test set)")


def plot(results: dict, histories: dict, path: str) -> None:
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
  for n, h in histories.items():
    k = max(1, len(h) // 30)
    smooth = np.convolve(h, np.ones(k) / k, mode="valid")
    ax0.plot(np.arange(len(smooth)) + k - 1, smooth / h[0], label=n)
  ax0.set(yscale="log", xlabel="step", ylabel="training loss / initial loss",
          title="Training curves (moving average)")
  ax0.legend(fontsize=8)
  x = np.arange(NUM_CLASSES)
  width = 0.8 / len(results)
  for i, (n, r) in enumerate(results.items()):
    ax1.bar(x + (i - (len(results) - 1) / 2) * width, r["iou"], width,
            label=f"{n} (mIoU {r['mean_iou']:.2f})")
  fractions = results[next(iter(results))]["test_class_fraction"]
  ax1.set_xticks(x, [f"{c}\n{100 * f:.1f}% px" for c, f in zip(CLASSES, fractions, strict=True)])
  ax1.set(ylim=(0, 1), ylabel="held-out IoU", title="Per-class IoU")
  ax1.legend(fontsize=8, ncols=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------- CLI


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=None, help="training steps per loss")
  p.add_argument("--quick", action="store_true", help="small smoke run (< 1 min)")
  p.add_argument("--losses", default=None,
                 help=f"comma-separated subset of {','.join(LOSSES)} (default: all; "
                 f"with --quick: {','.join(QUICK_LOSSES)})")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  cfg = Settings()
  if args.quick:
    cfg = Settings(size=32, train=64, test=32, batch=8, steps=15)
  if args.steps is not None:
    cfg.steps = args.steps
  chosen = args.losses or ",".join(QUICK_LOSSES if args.quick else LOSSES)
  names = [n.strip() for n in chosen.split(",") if n.strip()]
  unknown = sorted(set(names) - set(LOSSES))
  if unknown:
    raise SystemExit(f"unknown loss(es) {unknown}; choose from {', '.join(LOSSES)}")
  for name in LOSSES:  # every config is checked before any training starts
    jaxloss.build_loss(loss_config(name))
  os.makedirs(args.out, exist_ok=True)

  train_data = make_dataset(cfg.seed, cfg.train, cfg.size)
  test_images, test_labels = make_dataset(cfg.seed + 1000, cfg.test, cfg.size)
  fractions = np.bincount(test_labels.ravel(), minlength=NUM_CLASSES) / test_labels.size
  print(f"data: {cfg.train} train / {cfg.test} test images of {cfg.size}x{cfg.size}; "
        "test pixel fractions " + ", ".join(
            f"{c} {100 * f:.1f}%" for c, f in zip(CLASSES, fractions, strict=True)))
  print(f"model: U-Net width {cfg.width}; AdamW lr {cfg.lr}; {cfg.steps} steps of "
        f"batch {cfg.batch}; jax {jax.__version__} on {jax.devices()[0].platform}")

  results, histories = {}, {}
  for name in names:
    run = train(name, cfg, train_data, progress=not args.no_progress)
    metrics = class_metrics(confusion(run["model"], test_images, test_labels, cfg.batch))
    histories[name] = run["history"]
    results[name] = dict(config=loss_config(name), **metrics, steps_per_s=run["steps_per_s"],
                         compile_s=run["compile_s"], final_loss=float(run["history"][-1]),
                         test_class_fraction=fractions.tolist())
    print(f"  -> mean IoU {metrics['mean_iou']:.3f}, {run['steps_per_s']:.1f} steps/s "
          f"(compile {run['compile_s']:.1f} s)")

  print_tables(results, quick=args.quick)
  summary = dict(settings=dataclasses.asdict(cfg), classes=CLASSES, results=results,
                 loss_curves={n: [round(float(v), 5) for v in h] for n, h in histories.items()})
  with open(os.path.join(args.out, "imbalanced_segmentation.json"), "w") as f:
    json.dump(summary, f, indent=1)
  plot(results, histories, os.path.join(args.out, "imbalanced_segmentation.png"))
  print(f"\nwrote {args.out}/imbalanced_segmentation.{{json,png}}")
  return summary


if __name__ == "__main__":
  main()
