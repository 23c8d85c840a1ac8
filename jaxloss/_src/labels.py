"""Integer class labels in one canonical dtype.

Labels of any integer dtype (uint8, int8, int16, int64) mean the same classes:
every label-taking function compares them as ``int32`` (``int64`` under
``jax_enable_x64``), never in their own dtype, where ``num_classes = 300``
wraps to 44 in ``uint8`` and ``ignore_index = -100`` becomes 156.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def label_dtype():
  """``int32``, or ``int64`` under ``jax_enable_x64``: the dtype labels are compared in."""
  return jnp.dtype(jnp.int64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.int32)


def is_integer(x) -> bool:
  """Whether ``x`` has an integer (signed or unsigned) dtype."""
  return bool(jnp.issubdtype(jnp.result_type(x), jnp.integer))


def canonical_labels(labels, name: str = "labels") -> Array:
  """``labels`` as :func:`label_dtype` integers.

  Raises:
    TypeError: ``labels`` is not of an integer dtype (float class indices are
      ambiguous with probabilities: cast them with ``.astype(jnp.int32)``).
  """
  labels = jnp.asarray(labels)
  if not is_integer(labels):
    raise TypeError(f"`{name}` must hold integer class labels, got dtype {labels.dtype}; "
                    f"cast class indices with `.astype(jnp.int32)`.")
  return labels.astype(label_dtype())
