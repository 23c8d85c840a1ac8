r"""Class weights from label frequencies, for imbalanced segmentation.

Computed from the labels at hand (a batch, or a dataset's label map), inside
``jit``: the counts are ``jnp.bincount(..., length=num_classes)`` over the
pixels that count, so shapes are static whatever the labels hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_choice, check_num_classes, check_range
from jaxloss._src.labels import canonical_labels, valid_labels
from jaxloss._src.typing import Array, ArrayLike

METHODS = ("inverse", "inverse_sqrt", "median", "effective")


def class_counts(labels: ArrayLike, num_classes: int, *,
                 ignore_index: int | None = None, axis_name=None) -> Array:
  """Number of pixels of each class ``[C]`` (float32); other values are not counted.

  With ``axis_name`` the counts are summed (``psum``) over that mapped axis:
  the histogram of the whole batch.
  """
  check_num_classes(num_classes)
  labels = canonical_labels(labels).reshape(-1)
  valid = valid_labels(labels, ignore_index, num_classes)
  counted = jnp.ones(labels.shape, bool) if valid is None else valid
  counts = jnp.bincount(jnp.where(counted, labels, 0), weights=counted.astype(jnp.float32),
                        length=num_classes)
  return counts if axis_name is None else jax.lax.psum(counts, axis_name)


def _median_present(counts: Array, present: Array) -> Array:
  """Median of the present classes' counts (1 if none), without a NaN placeholder."""
  ranked = jnp.sort(jnp.where(present, counts, jnp.inf))
  k = jnp.sum(present)
  lo = ranked[jnp.maximum((k - 1) // 2, 0)]
  hi = ranked[jnp.minimum(k // 2, counts.shape[0] - 1)]
  return jnp.where(k > 0, 0.5 * (lo + hi), 1.0)


def _raw_weights(counts: Array, present: Array, method: str, beta: float) -> Array:
  safe = jnp.where(present, counts, 1.0)
  if method == "inverse":
    return 1 / safe
  if method == "inverse_sqrt":
    return jax.lax.rsqrt(safe)
  if method == "median":
    return _median_present(counts, present) / safe
  # 1 - beta**n, accurate for beta close to 1.
  effective_number = -jnp.expm1(safe * jnp.log(beta)) / (1 - beta)
  return 1 / effective_number


def class_weights(labels: ArrayLike, num_classes: int, *, method: str = "inverse",
                  beta: float = 0.999, ignore_index: int | None = None,
                  axis_name=None) -> Array:
  r"""Per-class weights ``[C]`` from the label frequencies :math:`n_c`.

  * ``"inverse"``: :math:`w_c \propto 1 / n_c`;
  * ``"inverse_sqrt"``: :math:`w_c \propto 1 / \sqrt{n_c}`;
  * ``"effective"``: :math:`w_c \propto (1 - \beta) / (1 - \beta^{n_c})`, the
    inverse effective number of samples (Cui et al., CVPR 2019);
  * ``"median"``: median frequency balancing (Eigen & Fergus, ICCV 2015),
    :math:`w_c = \operatorname{median}_k n_k / n_c` over the present classes.

  Normalisation: ``"inverse"``, ``"inverse_sqrt"`` and ``"effective"`` have
  mean 1 over the present classes; ``"median"`` keeps its own scale (the
  class of median frequency weighs 1). A class absent from the labels gets
  the largest weight of the present classes (as MONAI's generalized Dice),
  so it stays finite and a rare class missing from one batch is not
  silenced. With no counted pixel at all every weight is 1.

  Args:
    labels: integer labels of any shape and integer dtype; values outside
      ``[0, C)`` are not counted.
    num_classes: ``C`` (static).
    method: one of ``"inverse"``, ``"inverse_sqrt"``, ``"median"``,
      ``"effective"``.
    beta: the ``"effective"`` hyper-parameter in ``[0, 1)``.
    ignore_index: label value that is not counted.
    axis_name: mapped axis (``shard_map``, ``pmap``) over which the label
      histogram is summed (``psum``), so that every device gets the weights
      of the whole batch, as one device would.

  Returns:
    ``[C]`` float32 weights, a constant for ``jax.grad``.
  """
  check_choice("method", method, METHODS)
  if method == "effective":
    check_range("beta", beta, 0.0, 1.0, high_open=True, hint=" method='effective' needs it.")
  counts = class_counts(labels, num_classes, ignore_index=ignore_index, axis_name=axis_name)
  present = counts > 0
  num_present = jnp.sum(present)
  w = jnp.where(present, _raw_weights(counts, present, method, beta), 0.0)
  if method != "median":
    w = w * num_present.astype(w.dtype) / jnp.where(num_present > 0, jnp.sum(w), 1.0)
  w = jnp.where(present, w, jnp.max(w))
  return jnp.where(num_present > 0, w, 1.0)
