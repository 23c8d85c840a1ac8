"""Type aliases of the public signatures: arrays in, ``jax.Array`` out."""

from __future__ import annotations

from typing import Any, Literal

import jax
from jax.typing import ArrayLike as ArrayLike

Array = jax.Array
Reduction = Literal["none", "mean", "sum"]
AxisName = Any  # a mapped axis name (str) or a tuple of them, as jax.lax.pmean takes

__all__ = ["Array", "ArrayLike", "AxisName", "Reduction"]
