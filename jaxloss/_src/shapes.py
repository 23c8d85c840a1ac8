"""Feature-map shapes shared by the dense detectors (FCOS points, anchor grids)."""

from __future__ import annotations

from collections.abc import Sequence


def level_hw(shape: Sequence[int]) -> tuple[int, int]:
  """``(H, W)`` of a level given as ``(H, W)`` or as an NHWC shape ``(B, H, W, C)``.

  Raises:
    ValueError: any other rank.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) == 2:
    return shape
  if len(shape) == 4:
    return shape[1], shape[2]
  raise ValueError(
      f"a feature shape must be (H, W) or an NHWC shape (B, H, W, C), got {shape}.")
