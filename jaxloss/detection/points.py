"""Points of a feature pyramid (mmdetection's ``MlvlPointGenerator``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxloss._src.checks import check_range
from jaxloss._src.shapes import level_hw
from jaxloss._src.typing import Array

__all__ = ["DEFAULT_STRIDES", "INF", "check_strides", "fcos_points", "grid_points"]


INF = math.inf


DEFAULT_STRIDES = (8, 16, 32, 64, 128)


def fcos_points(feature_shapes: Sequence[Sequence[int]],
                strides: Sequence[float] = DEFAULT_STRIDES) -> list[Array]:
  r"""The points of every pyramid level, as mmdetection's ``MlvlPointGenerator``.
  https://arxiv.org/abs/1904.01355

  Point ``(i, j)`` (row, column) of a level of stride :math:`s` is
  :math:`((j + 0.5) s, (i + 0.5) s)` in pixels, ``(x, y)`` order; points of a
  level are row-major, matching ``feature.reshape(B, H * W, C)`` of an NHWC map.

  Args:
    feature_shapes: per level, ``(H, W)`` or the NHWC shape ``(B, H, W, C)``.
    strides: per level, the stride in pixels.

  Returns:
    A list with one float32 ``[H_l * W_l, 2]`` array per level (constants:
    everything is static).
  """
  return [jnp.asarray(p) for p in grid_points(feature_shapes, strides)]


def grid_points(feature_shapes: Sequence[Sequence[int]],
                strides: Sequence[float]) -> list[np.ndarray]:
  """:func:`fcos_points` as NumPy arrays (constants inside ``jit``)."""
  if len(feature_shapes) != len(strides):
    raise ValueError(
        f"got {len(feature_shapes)} feature shapes but {len(strides)} strides; pass "
        "one stride per pyramid level.")
  check_strides(strides)
  points = []
  for shape, s in zip(feature_shapes, strides, strict=True):
    h, w = level_hw(shape)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
    points.append(np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32))
  return points


def check_strides(strides) -> None:
  for s in strides:
    check_range("strides", s, 0.0, low_open=True, hint=" Each level's stride is in pixels.")
