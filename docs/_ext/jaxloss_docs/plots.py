"""Figures drawn at build time from the real jaxloss functions (no checked-in images).

Each ``plot_*`` function draws one figure; :func:`write_all` saves them as PNG
into ``docs/generated/plots/``. A figure whose losses are not in this build of
jaxloss yet is replaced by a placeholder saying so. A PNG is redrawn only when
it is older than this file or than a jaxloss source file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from jaxloss_docs.util import write_if_changed

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_focal():
  """Focal loss against the probability of the true class, as Lin et al. (2017) Fig. 1."""
  import jax.numpy as jnp

  import jaxloss
  plt = _plt()
  p_t = np.linspace(0.001, 0.999, 400)
  logits = jnp.log(p_t) - jnp.log1p(-p_t)
  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  for g, c in zip((0.0, 0.5, 1.0, 2.0, 5.0), COLORS, strict=False):
    loss = jaxloss.sigmoid_focal_loss(logits, jnp.ones_like(logits), alpha=None, gamma=g,
                                      reduction="none")
    label = "γ = 0 (cross entropy)" if g == 0 else f"γ = {g:g}"
    ax.plot(p_t, np.asarray(loss), color=c, label=label)
  ax.axvspan(0.6, 1.0, color="0.92", zorder=0)
  ax.text(0.8, 1.2, "well-classified\nexamples", ha="center", fontsize=9)
  ax.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of the ground-truth class  $p_t$",
         ylabel="loss", title="sigmoid_focal_loss(alpha=None, gamma=γ)")
  ax.legend(frameon=False)
  fig.tight_layout()
  return fig


def plot_iou():
  """IoU-family losses (and their gradients) as a predicted box slides past a target."""
  import jax
  import jax.numpy as jnp

  import jaxloss
  plt = _plt()
  target = jnp.array([0.0, 0.0, 4.0, 4.0])
  dx = jnp.linspace(-9.0, 9.0, 361)

  def pred(d):
    return jnp.stack([d, 1.0 + 0 * d, d + 4.0, 3.0 + 0 * d], -1)

  losses = {
      "IoU (linear)": lambda p: jaxloss.iou_loss(p, target, mode="linear", reduction="none"),
      "GIoU": lambda p: jaxloss.giou_loss(p, target, reduction="none"),
      "DIoU": lambda p: jaxloss.diou_loss(p, target, reduction="none"),
      "CIoU": lambda p: jaxloss.ciou_loss(p, target, reduction="none"),
      "EIoU": lambda p: jaxloss.eiou_loss(p, target, reduction="none"),
      "SIoU": lambda p: jaxloss.siou_loss(p, target, reduction="none"),
  }
  fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13.0, 3.8),
                                      gridspec_kw={"width_ratios": [0.8, 1.2, 1.2]})
  ax0.add_patch(plt.Rectangle((0, 0), 4, 4, fill=False, lw=2, color="k", label="target"))
  for d, a in ((-5.0, 0.35), (-1.5, 0.6), (1.0, 1.0)):
    ax0.add_patch(plt.Rectangle((d, 1), 4, 2, fill=False, lw=1.5, color=COLORS[1], alpha=a))
  ax0.annotate("", xy=(4.5, 0.5), xytext=(-4.5, 0.5),
               arrowprops={"arrowstyle": "->", "color": COLORS[1]})
  ax0.set(xlim=(-6, 6), ylim=(-1, 5), aspect="equal", title="pred [dx, 1, dx+4, 3]\n"
          "slides past target [0, 0, 4, 4]")
  ax0.set_xticks([]), ax0.set_yticks([])
  for (name, fn), c in zip(losses.items(), COLORS, strict=True):
    value, grad = jax.jit(jax.vmap(jax.value_and_grad(lambda d, fn=fn: fn(pred(d)))))(dx)
    style = "--" if name == "DIoU" else "-"
    ax1.plot(dx, np.asarray(value), style, color=c, label=name, zorder=3 if style == "--" else 2)
    ax2.plot(dx, np.asarray(grad), style, color=c, label=name, zorder=3 if style == "--" else 2)
  ax1.set(xlabel="horizontal offset dx", ylabel="loss", title="loss")
  ax2.set(xlabel="horizontal offset dx", ylabel="d loss / d dx",
          title="gradient (0 where IoU loss is flat)")
  ax1.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.93))
  for ax in (ax1, ax2):
    ax.axvspan(-9, -4, color="0.93", zorder=0)
    ax.axvspan(4, 9, color="0.93", zorder=0)
  for ax in (ax1, ax2):
    ax.text(-6.5, 0.97, "disjoint", ha="center", va="top", fontsize=8,
            transform=ax.get_xaxis_transform())
    ax.text(6.5, 0.97, "disjoint", ha="center", va="top", fontsize=8,
            transform=ax.get_xaxis_transform())
  fig.tight_layout()
  return fig


def _disk(radius, size=32, center=15.5, sharpness=2.0):
  yy, xx = np.mgrid[:size, :size]
  dist = np.hypot(yy - center, xx - center)
  return sharpness * (radius - dist)


def plot_segmentation():
  """Dice, Jaccard, Tversky, Lovasz hinge and BCE as a predicted disk grows past the true one."""
  import jax
  import jax.numpy as jnp

  import jaxloss
  plt = _plt()
  true_r = 8.0
  labels = jnp.asarray(_disk(true_r) > 0, jnp.int32)[None]
  radii = np.linspace(0.5, 15.5, 121)
  logits = jnp.asarray(np.stack([_disk(r) for r in radii]))[:, None, :, :, None]
  region = {
      "dice": lambda x: jaxloss.dice_loss(x, labels, activation="sigmoid"),
      "jaccard": lambda x: jaxloss.jaccard_loss(x, labels, activation="sigmoid"),
      "tversky α=0.3, β=0.7": lambda x: jaxloss.tversky_loss(
          x, labels, activation="sigmoid", alpha=0.3, beta=0.7),
      "tversky α=0.7, β=0.3": lambda x: jaxloss.tversky_loss(
          x, labels, activation="sigmoid", alpha=0.7, beta=0.3),
  }
  pixel = {
      "lovasz hinge": lambda x: jaxloss.lovasz_hinge_loss(x[..., 0], labels),
      "binary cross entropy": lambda x: jaxloss.binary_cross_entropy(
          x[..., 0], labels.astype(jnp.float32)),
  }
  fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13.0, 4.0),
                                      gridspec_kw={"width_ratios": [0.75, 1.2, 1.2]})
  ax0.imshow(np.asarray(labels[0]), cmap="Greys", vmin=0, vmax=2.5)
  for r, ls in ((4.0, "--"), (12.0, ":")):
    ax0.contour(_disk(r), levels=[0], colors=[COLORS[1]], linestyles=ls)
  ax0.set_title(f"target disk r={true_r:g} (grey),\npredictions r=4 and r=12", fontsize=10)
  ax0.set_xticks([]), ax0.set_yticks([])
  x = radii / true_r
  for ax, losses, colors in ((ax1, region, COLORS), (ax2, pixel, COLORS[4:])):
    for (name, fn), c in zip(losses.items(), colors, strict=False):
      ax.plot(x, np.asarray(jax.jit(jax.vmap(fn))(logits)), color=c, label=name)
    ax.axvline(1.0, color="0.6", lw=0.8)
    ax.set_xlabel("predicted radius / true radius")
    ax.legend(frameon=False, fontsize=8, loc="upper center")
    ax.text(0.02, 0.02, "under-segmented\n(false negatives)", fontsize=8,
            transform=ax.transAxes)
    ax.text(0.98, 0.02, "over-segmented\n(false positives)", fontsize=8, ha="right",
            transform=ax.transAxes)
  ax1.set(ylabel="loss", ylim=(-0.05, 1.05), title="region losses (sigmoid, C = 1)")
  ax2.set(ylabel="loss", title="pixel and margin losses")
  fig.tight_layout()
  return fig


def plot_fcos():
  """FCOS assignment on a toy image: points by level, positives, centerness targets."""
  import jax.numpy as jnp

  import jaxloss
  plt = _plt()
  strides = (8, 16, 32)
  ranges = ((-1, 32), (32, 64), (64, float("inf")))
  shapes = [(128 // s, 128 // s) for s in strides]
  boxes = np.array([[6, 10, 40, 38], [36, 30, 120, 122], [88, 4, 118, 26]], np.float32)
  labels = np.array([0, 1, 2], np.int32)
  points = jaxloss.fcos_points(shapes, strides)
  level = np.concatenate([np.full(p.shape[0], i) for i, p in enumerate(points)])
  xy = np.asarray(jnp.concatenate(points))
  fig, axes = plt.subplots(1, 2, figsize=(11.0, 5.4))
  for ax, sampling in zip(axes, (False, True), strict=True):
    cls, _, ctr = jaxloss.fcos_targets(
        points, boxes[None], labels[None], np.ones((1, 3), bool), num_classes=3,
        strides=strides, regress_ranges=ranges, center_sampling=sampling)
    pos = np.asarray(cls[0]) < 3
    ctr = np.asarray(ctr[0])
    for i in range(len(strides)):
      on = level == i
      ax.scatter(*xy[on & ~pos].T, s=4 + 4 * i, color=COLORS[i], alpha=0.25, lw=0)
    if sampling:
      sc = ax.scatter(*xy[pos].T, c=ctr[pos], cmap="viridis", vmin=0, vmax=1,
                      s=[(30, 70, 140)[lv] for lv in level[pos]], edgecolors="k", lw=0.5)
      fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="centerness target")
      ax.set_title("center sampling (radius 1.5 strides):\n"
                   "positives coloured by centerness target")
    else:
      for i in range(len(strides)):
        on = pos & (level == i)
        ax.scatter(*xy[on].T, s=(30, 70, 140)[i], color=COLORS[i], edgecolors="k", lw=0.5,
                   label=f"level {i}: stride {strides[i]}, max(ltrb) in {ranges[i]}")
      ax.legend(loc="lower left", fontsize=7, framealpha=0.9)
      ax.set_title("no center sampling: positives coloured by level\n"
                   "(faint: background points)")
    for b, c in zip(boxes, ("k", "0.35", "0.6"), strict=True):
      ax.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, lw=2, color=c))
    ax.set(xlim=(0, 128), ylim=(128, 0), aspect="equal")
  fig.tight_layout()
  return fig


PLOTS = {
    "focal_loss.png": plot_focal,
    "iou_losses.png": plot_iou,
    "segmentation_losses.png": plot_segmentation,
    "fcos_assignment.png": plot_fcos,
}


def _placeholder(name: str, error: Exception):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.0, 1.2))
  ax.axis("off")
  ax.text(0.5, 0.5, f"{name}: not available in this build of jaxloss\n({error})",
          ha="center", va="center", fontsize=9)
  return fig


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
  _plt().close(fig)
  return buf.getvalue()


def _stale(target: Path, sources: list[Path]) -> bool:
  return not target.exists() or any(s.stat().st_mtime > target.stat().st_mtime
                                    for s in sources)


def write_all(out: Path) -> None:
  import jaxloss
  sources = [Path(__file__), *Path(jaxloss.__file__).parent.rglob("*.py")]
  for name, draw in PLOTS.items():
    target = out / name
    if not _stale(target, sources):
      continue
    try:
      fig = draw()
    except AttributeError as e:
      fig = _placeholder(name, e)
    write_if_changed(target, _png(fig))
    target.touch()
