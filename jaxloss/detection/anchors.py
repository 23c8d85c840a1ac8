r"""Anchor boxes of a feature pyramid, in mmdetection's ``AnchorGenerator`` order.

RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002) places :math:`R \times S` anchors at every
location of every pyramid level: for a level of stride :math:`s`, scales
:math:`\sigma_k = b \cdot 2^{k / S}` (``octave_base_scale`` :math:`b`,
``scales_per_octave`` :math:`S`) and aspect ratios :math:`r` (height over
width), the anchor has width :math:`s \sigma_k / \sqrt r` and height
:math:`s \sigma_k \sqrt r`, centred at :math:`((j + o) s, (i + o) s)` for
column :math:`j`, row :math:`i` and ``center_offset`` :math:`o` (mmdetection's
default :math:`o = 0`: anchors centred on the top-left corner of their cell).

Order, as mmdetection's (so that anchors, targets and a head's
``[B, H, W, A_loc * C]`` outputs reshaped to ``[B, H * W * A_loc, C]`` line
up index for index): levels, then locations row-major, then per location the
ratios (outer) and scales (inner).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxloss._src.shapes import level_hw
from jaxloss._src.typing import Array

RETINANET_STRIDES = (8, 16, 32, 64, 128)


def base_anchors(stride: float, *, octave_base_scale: float = 4, scales_per_octave: int = 3,
                 ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 center_offset: float = 0.0) -> np.ndarray:
  """The ``[R * S, 4]`` anchors of one location at the origin (float64 numpy)."""
  scales = octave_base_scale * 2.0 ** (np.arange(scales_per_octave) / scales_per_octave)
  h_ratios = np.sqrt(np.asarray(ratios, np.float64))
  ws = (stride / h_ratios[:, None] * scales[None, :]).ravel()
  hs = (stride * h_ratios[:, None] * scales[None, :]).ravel()
  c = center_offset * stride
  return np.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], -1)


def anchors_per_location(*, scales_per_octave: int = 3,
                         ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> int:
  """Number of anchors at every location: ``len(ratios) * scales_per_octave``."""
  return len(ratios) * int(scales_per_octave)


def anchor_grid_numpy(feature_shapes: Sequence[Sequence[int]],
                      strides: Sequence[float] = RETINANET_STRIDES, *,
                      octave_base_scale: float = 4, scales_per_octave: int = 3,
                      ratios: Sequence[float] = (0.5, 1.0, 2.0),
                      center_offset: float = 0.0) -> list[np.ndarray]:
  """:func:`anchor_grid` per level, as float32 numpy arrays (constants inside ``jit``)."""
  if len(feature_shapes) != len(strides):
    raise ValueError(f"got {len(feature_shapes)} feature shapes but {len(strides)} strides; "
                     "pass one stride per pyramid level.")
  if scales_per_octave < 1 or not len(ratios) or min(ratios) <= 0:
    raise ValueError("scales_per_octave must be >= 1 and ratios a non-empty sequence of "
                     f"positive numbers, got {scales_per_octave!r} and {ratios!r}.")
  levels = []
  for shape, stride in zip(feature_shapes, strides, strict=True):
    h, w = level_hw(shape)
    base = base_anchors(stride, octave_base_scale=octave_base_scale,
                        scales_per_octave=scales_per_octave, ratios=ratios,
                        center_offset=center_offset)
    ys, xs = np.meshgrid(np.arange(h) * float(stride), np.arange(w) * float(stride),
                         indexing="ij")
    shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], -1)
    levels.append((shifts[:, None, :] + base[None]).reshape(-1, 4).astype(np.float32))
  return levels


def anchor_grid(feature_shapes: Sequence[Sequence[int]],
                strides: Sequence[float] = RETINANET_STRIDES, *, octave_base_scale: float = 4,
                scales_per_octave: int = 3, ratios: Sequence[float] = (0.5, 1.0, 2.0),
                center_offset: float = 0.0) -> Array:
  r"""All anchors of a feature pyramid, ``xyxy`` pixels, mmdetection's order.
  https://arxiv.org/abs/1708.02002

  See the module docstring for the formula and the order. The defaults are
  RetinaNet's (9 anchors per location); GFL / ATSS use
  ``octave_base_scale=8, scales_per_octave=1, ratios=(1.0,)``.

  Args:
    feature_shapes: per level, ``(H, W)`` or the NHWC shape ``(B, H, W, C)``.
    strides: per level, the stride in pixels (the anchors' base size).
    octave_base_scale, scales_per_octave: scales
      ``octave_base_scale * 2 ** (k / scales_per_octave)``.
    ratios: aspect ratios (height / width).
    center_offset: anchor centre in the cell, in strides (mmdetection: 0).

  Returns:
    float32 ``[A, 4]`` with ``A = sum_l H_l * W_l * len(ratios) * scales_per_octave``
    (a constant: everything is static).
  """
  return jnp.asarray(np.concatenate(anchor_grid_numpy(
      feature_shapes, strides, octave_base_scale=octave_base_scale,
      scales_per_octave=scales_per_octave, ratios=ratios, center_offset=center_offset)))
