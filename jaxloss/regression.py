"""Regression losses: L1, MSE, smooth L1 (Huber-like) and balanced L1.

All are elementwise: the per-element loss has the shape of ``pred``.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxloss._src.checks import check_range
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import broadcast_mask, fill_masked, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction


def _difference(pred: ArrayLike, target: ArrayLike, where: ArrayLike | None):
  """``pred - target`` (masked entries 0) and the mask; ``target`` broadcasts to ``pred``."""
  pred, target = as_float(pred), as_float(target)
  try:
    shape = tuple(int(n) for n in jnp.broadcast_shapes(pred.shape, target.shape))
  except ValueError:
    shape = None
  if shape is None or shape != pred.shape:
    # optax raises too: pred [4] against target [4, 1] would silently become [4, 4]
    raise ValueError(
        f"`target` of shape {target.shape} must broadcast to `pred`'s shape {pred.shape} "
        "without changing it; reshape one of them (e.g. `target.reshape(pred.shape)`).")
  mask = broadcast_mask(where, shape)
  diff = fill_masked(jnp.broadcast_to(pred, shape), mask) - fill_masked(
      jnp.broadcast_to(target, shape), mask)
  return diff, mask


def l1_loss(pred: ArrayLike, target: ArrayLike, *, weight=None, where=None,
            reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
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
             reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
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
                   weight=None, where=None, reduction: Reduction = "mean",
                   avg_factor=None, axis_name=None) -> Array:
  r"""Smooth L1 loss (Girshick, Fast R-CNN, 2015).
  https://arxiv.org/abs/1504.08083

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
  check_range("beta", beta, 0.0, hint=" (the width of the quadratic zone; 0 is the L1 loss)")
  diff, mask = _difference(pred, target, where)
  ad = jnp.abs(diff)
  # beta may be traced; beta == 0 takes the L1 branch everywhere (ad < 0 never holds).
  safe_beta = jnp.where(beta > 0, beta, 1.0)
  loss = jnp.where(ad < beta, 0.5 * jnp.square(diff) / safe_beta, ad - 0.5 * beta)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def _integrated_log1p(u: Array) -> Array:
  r""":math:`g(u) = (1 + u) \log(1 + u) - u = \int_0^u \log(1 + s)\, ds` for ``u >= 0``.

  The direct form cancels for small :math:`u` (:math:`g \approx u^2 / 2`) in
  the value and in the gradient (:math:`\log(1 + u) + 1 - 1`); below
  :math:`u = 0.1` the series :math:`\sum_{n \ge 2} (-u)^n / (n (n - 1))` to
  :math:`n = 8` is exact to 1e-9, relative.
  """
  small = u < 0.1
  v = jnp.where(small, u, 0.0)
  series = sum((-v) ** n / (n * (n - 1)) for n in range(2, 9))
  w = jnp.where(small, 1.0, u)
  return jnp.where(small, series, (1 + w) * jnp.log1p(w) - w)


def balanced_l1_loss(pred: ArrayLike, target: ArrayLike, *, alpha: float = 0.5,
                     gamma: float = 1.5, beta: float = 1.0, weight=None, where=None,
                     reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Balanced L1 loss (Pang et al., Libra R-CNN, CVPR 2019), as mmdetection's.

  With :math:`d = |x - y|`, :math:`b = e^{\gamma / \alpha} - 1` and
  :math:`u = b d / \beta`:

  .. math::
     \ell(d) = \begin{cases}
       \frac{\alpha}{b} (b d + 1) \log(u + 1) - \alpha d & d < \beta \\
       \gamma d + \gamma / b - \alpha \beta & \text{otherwise,}
     \end{cases}

  which promotes the gradient of inliers while keeping that of outliers at
  :math:`\gamma`. This is mmdetection's ``balanced_l1_loss`` for every
  ``beta`` (its first factor is :math:`b d + 1`, not :math:`u + 1`; the paper
  has :math:`\beta = 1`, where the two agree), continuous at :math:`d = \beta`.
  The inlier branch is evaluated as
  :math:`\frac{\alpha}{b} (\beta g(u) + (1 - \beta) \log(1 + u))` with
  :math:`g(u) = (1 + u)\log(1 + u) - u` (:func:`_integrated_log1p`), which
  does not cancel at small :math:`d`.
  https://arxiv.org/abs/1904.02701

  Args:
    pred: predictions ``[...]``.
    target: targets, broadcastable to ``pred``.
    alpha: inlier gradient promotion (> 0).
    gamma: upper bound of the gradient (> 0).
    beta: switch point between the two branches (> 0).
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  for name, value in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
    check_range(name, value, 0.0, low_open=True)
  diff, mask = _difference(pred, target, where)
  d = jnp.abs(diff)
  b = jnp.expm1(gamma / alpha)
  u = b * jnp.minimum(d, beta) / beta
  inlier = alpha / b * (beta * _integrated_log1p(u) + (1 - beta) * jnp.log1p(u))
  loss = jnp.where(d < beta, inlier, gamma * d + gamma / b - alpha * beta)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)
