"""Regression losses: L1, MSE, smooth L1 (Huber-like) and balanced L1.

All are elementwise: the per-element loss has the shape of ``pred``.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxloss._reduce import Array, ArrayLike, as_float, broadcast_mask, fill_masked, reduce_loss


def _difference(pred: ArrayLike, target: ArrayLike, where: ArrayLike | None):
  pred, target = as_float(pred), as_float(target)
  shape = jnp.broadcast_shapes(pred.shape, target.shape)
  mask = broadcast_mask(where, shape)
  diff = fill_masked(jnp.broadcast_to(pred, shape), mask) - fill_masked(
      jnp.broadcast_to(target, shape), mask)
  return diff, mask


def l1_loss(pred: ArrayLike, target: ArrayLike, *, weight=None, where=None,
            reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Absolute error :math:`|x - y|`.

  Args:
    pred: predictions ``[...]``.
    target: targets, broadcastable to ``pred``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.

  Example:
    >>> import jax.numpy as jnp, jaxloss
    >>> pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    >>> print(jaxloss.l1_loss(pred, 0.0, weight=jnp.array([1.0, 0.5])))  # per-sample weight
    1.625
  """
  diff, mask = _difference(pred, target, where)
  return reduce_loss(jnp.abs(diff), weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def mse_loss(pred: ArrayLike, target: ArrayLike, *, weight=None, where=None,
             reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Squared error :math:`(x - y)^2`.

  Args:
    pred: predictions ``[...]``.
    target: targets, broadcastable to ``pred``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  diff, mask = _difference(pred, target, where)
  return reduce_loss(jnp.square(diff), weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def smooth_l1_loss(pred: ArrayLike, target: ArrayLike, *, beta: float = 1.0,
                   weight=None, where=None, reduction: str = "mean",
                   avg_factor=None, axis_name=None) -> Array:
  r"""Smooth L1 loss (Girshick, Fast R-CNN, 2015).

  .. math::
     \ell(d) = \begin{cases} 0.5 d^2 / \beta & |d| < \beta \\
                             |d| - 0.5 \beta & \text{otherwise} \end{cases}

  with :math:`d = x - y`; ``beta=0`` is the L1 loss. Equals
  ``optax.huber_loss(x, y, delta=beta) / beta`` and
  ``torch.nn.functional.smooth_l1_loss``.

  Args:
    pred: predictions ``[...]``.
    target: targets, broadcastable to ``pred``.
    beta: width of the quadratic zone (>= 0).
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.

  Example:
    >>> import jax.numpy as jnp, jaxloss
    >>> d = jnp.array([0.25, 0.5, 2.0])
    >>> jaxloss.smooth_l1_loss(d, 0.0, beta=0.5, reduction="none")
    Array([0.0625, 0.25  , 1.75  ], dtype=float32)
    >>> valid = jnp.array([True, True, False])
    >>> print(jaxloss.smooth_l1_loss(d, 0.0, beta=0.5, where=valid))
    0.15625
  """
  diff, mask = _difference(pred, target, where)
  ad = jnp.abs(diff)
  # beta may be traced; beta == 0 takes the L1 branch everywhere (ad < 0 never holds).
  safe_beta = jnp.where(beta > 0, beta, 1.0)
  loss = jnp.where(ad < beta, 0.5 * jnp.square(diff) / safe_beta, ad - 0.5 * beta)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def balanced_l1_loss(pred: ArrayLike, target: ArrayLike, *, alpha: float = 0.5,
                     gamma: float = 1.5, beta: float = 1.0, weight=None, where=None,
                     reduction: str = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Balanced L1 loss (Pang et al., Libra R-CNN, CVPR 2019).

  With :math:`d = |x - y|` and :math:`b = e^{\gamma / \alpha} - 1`:

  .. math::
     \ell(d) = \begin{cases}
       \frac{\alpha}{b} (b d / \beta + 1) \log(b d / \beta + 1) - \alpha d & d < \beta \\
       \gamma d + \gamma / b - \alpha \beta & \text{otherwise,}
     \end{cases}

  which promotes the gradient of inliers while keeping that of outliers at
  :math:`\gamma`; as mmdetection's ``balanced_l1_loss``.

  Args:
    pred: predictions ``[...]``.
    target: targets, broadcastable to ``pred``.
    alpha: inlier gradient promotion.
    gamma: upper bound of the gradient.
    beta: switch point between the two branches (> 0).
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  if beta <= 0:
    raise ValueError(f"balanced_l1_loss needs beta > 0, got {beta}.")
  diff, mask = _difference(pred, target, where)
  d = jnp.abs(diff)
  b = jnp.expm1(gamma / alpha)
  inner = b * jnp.minimum(d, beta) / beta + 1
  loss = jnp.where(d < beta,
                   alpha / b * inner * jnp.log(inner) - alpha * d,
                   gamma * d + gamma / b - alpha * beta)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)
