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


def check_labels(labels, num_classes: int, *, ignore_index: int | None = None) -> None:
  """Checks that every label is a class in ``[0, num_classes)`` or ``ignore_index``.

  Inside ``jit`` nothing can raise, so the losses read an out-of-range label
  as background (sigmoid losses) or drop it (softmax losses). While
  debugging, call this eagerly (it raises ``ValueError``) or inside a function
  wrapped by ``jax.experimental.checkify.checkify`` (a user check: the error
  comes back from ``err.throw()``)::

    def step(logits, labels):
      jaxloss.check_labels(labels, num_classes=21, ignore_index=255)
      return jaxloss.cross_entropy(logits, labels, ignore_index=255)

    err, loss = jax.jit(checkify.checkify(step))(logits, labels)
    err.throw()

  Args:
    labels: integer labels of any shape and integer dtype.
    num_classes: ``C``, a positive Python int.
    ignore_index: a label value that is allowed besides the classes, or ``None``.

  Raises:
    TypeError: ``labels`` is not of an integer dtype, or ``num_classes`` is not
      an int.
    ValueError: ``num_classes < 1``; or, when called eagerly, a label outside
      the classes (the message gives the first one).
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int):
    raise TypeError(f"`num_classes` must be a Python int, got {type(num_classes).__name__}.")
  if num_classes < 1:
    raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
  labels = canonical_labels(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if ignore_index is not None:
    bad = bad & (labels != ignore_index)
  allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or {ignore_index}")
  if isinstance(labels, jax.core.Tracer):
    from jax.experimental import checkify
    checkify.check(~jnp.any(bad), f"labels must be in {allowed}; found {{}} outside it",
                   jnp.sum(bad))
    return
  if bool(jnp.any(bad)):
    first = labels.reshape(-1)[jnp.argmax(bad.reshape(-1))]
    raise ValueError(f"labels must be in {allowed}; found {int(jnp.sum(bad))} outside it, "
                     f"e.g. {int(first)}.")
