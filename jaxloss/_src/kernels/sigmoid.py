"""Sigmoid kernels: BCE with logits and the sigmoid focal loss, per element and summed.

See :mod:`jaxloss._src.kernels.core` for how a kernel and its plain-autodiff path are chosen.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss._src.kernels.core import canonical, elementwise_kernel, fused_enabled
from jaxloss._src.labels import canonical_labels, one_hot
from jaxloss._src.numerics import safe_pow, sigmoid_pieces
from jaxloss._src.typing import Array

__all__ = ["bce_kernel", "bce_parts", "bce_weighted_kernel", "focal_kernel",
           "focal_labels_kernel", "binary_cross_entropy", "focal_label_terms", "p_minus_t",
           "sigmoid_focal", "sigmoid_focal_sum", "sigmoid_parts"]


def sigmoid_parts(x: Array):
  """``(p, q, softplus(x))``; see :func:`sigmoid_pieces` (and :func:`bce_parts`
  for a BCE: ``softplus(x) - t x`` cancels at confident logits)."""
  p, q, r, lg = sigmoid_pieces(x)
  return p, q, r + lg


def bce_parts(x: Array, t: Array):
  """``(BCE(x, t), p, q)`` without cancellation: ``(max(x, 0) - t x) + log1p(exp(-|x|))``."""
  p, q, r, lg = sigmoid_pieces(x)
  return (r - t * x) + lg, p, q


def p_minus_t(p: Array, q: Array, t: Array) -> Array:
  # p - t as p (1 - t) - q t: exact where p rounds to 1 (x > 17), where p - 1 is 0.
  return p * (1 - t) - q * t


def _alpha_t(t: Array, alpha: float | None):
  return 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)


def _focal_terms(x: Array, t: Array, alpha: float | None, gamma: float):
  """``(loss, p, q, ce, z, m, alpha_t)`` of the sigmoid focal loss."""
  ce, p, q = bce_parts(x, t)
  z = p * (1 - t) + q * t
  m = safe_pow(z, gamma)
  a = _alpha_t(t, alpha)
  return a * ce * m, p, q, ce, z, m, a


def _powers(z: Array, gamma: float) -> tuple[Array, Array]:
  """``(z^gamma, z^(gamma - 1))`` for ``z >= 0``; the second is 0 where ``z`` is 0.

  Never as ``z^gamma / z``: the derivative of ``1 / z`` overflows float32 for
  ``z < 1e-19`` (logits beyond 43), and ``jax.hessian`` differentiates this
  backward pass. Integer ``gamma``: polynomials; otherwise from one
  ``log z``, whose derivative ``dz / z`` stays bounded.
  """
  if gamma == 0:
    return jnp.ones_like(z), jnp.zeros_like(z)
  if float(gamma).is_integer() and 0 < gamma <= 8:
    return lax.integer_pow(z, int(gamma)), lax.integer_pow(z, int(gamma) - 1)
  nonzero = z > 0
  log_z = jnp.log(jnp.where(nonzero, z, 1))
  return (jnp.where(nonzero, jnp.exp(gamma * log_z), 0),
          jnp.where(nonzero, jnp.exp((gamma - 1) * log_z), 0))


def _focal_grads(x: Array, t: Array, alpha: float | None, gamma: float):
  r"""Analytic :math:`(\partial \ell / \partial x, \partial \ell / \partial t)`.

  With :math:`z = 1 - p_t = p (1 - t) + q t`, :math:`m = z^\gamma`:
  :math:`\partial_x \ell = a [m (p - t) + \gamma\, ce\, (1 - 2t)\, pq\, z^{\gamma - 1}]` and
  :math:`\partial_t \ell = (2\alpha - 1)\, ce\, m + a [\gamma\, ce\, (q - p)\, z^{\gamma - 1}
  - m x]`.
  """
  ce, p, q = bce_parts(x, t)
  z = p * (1 - t) + q * t
  a = _alpha_t(t, alpha)
  # z^(gamma - 1) is unbounded for gamma < 1 (up to 1e38), but pq and ce
  # vanish with z (pq / z <= 1, ce / z -> 1), so each product below is bounded.
  m, m_z = _powers(z, gamma)
  dx = a * (m * p_minus_t(p, q, t) + gamma * ce * (1 - 2 * t) * (p * q * m_z))
  dt = a * (gamma * ce * (q - p) * m_z - m * x)
  if alpha is not None:
    dt = dt + (2 * alpha - 1) * ce * m
  return dx, dt


focal_kernel = elementwise_kernel(lambda x, t, alpha, gamma: _focal_terms(x, t, alpha, gamma)[0],
                                  _focal_grads, num_arrays=2, num_static=2)


def _focal_labels_value(x, labels, alpha, gamma):
  return _focal_terms(x, one_hot(labels, x.shape[-1], x.dtype), alpha, gamma)[0]


def _focal_labels_grads(x, labels, alpha, gamma):
  return _focal_grads(x, one_hot(labels, x.shape[-1], x.dtype), alpha, gamma)[0], None


focal_labels_kernel = elementwise_kernel(_focal_labels_value, _focal_labels_grads,
                                         num_arrays=2, num_static=2)


def sigmoid_focal(logits: Array, targets: Array, *, alpha: float | None = 0.25,
                  gamma: float = 2.0) -> Array:
  r"""Per-element sigmoid focal loss :math:`\alpha_t (1 - p_t)^\gamma\,\mathrm{BCE}(x, t)`.

  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, with
  :math:`p_t = p t + (1 - p)(1 - t)` and :math:`\alpha_t = \alpha t + (1 -
  \alpha)(1 - t)` for soft targets (torchvision's and mmdetection's form).

  Args:
    logits: float ``[..., C]`` (float32 or wider).
    targets: float targets in ``[0, 1]`` with the shape of ``logits``, or
      integer labels ``[...]`` (``[0, C)`` a class, anything else background).
    alpha: positive-class weight, or ``None`` for none.
    gamma: focusing exponent ``>= 0`` (any real).

  Returns:
    The per-element loss ``[..., C]``.
  """
  alpha = None if alpha is None else float(alpha)
  gamma = float(gamma)
  integer = jnp.issubdtype(targets.dtype, jnp.integer)
  if integer:
    targets = canonical_labels(targets)
  if not fused_enabled():
    if integer:
      targets = one_hot(targets, logits.shape[-1], logits.dtype)
    return _focal_terms(logits, targets, alpha, gamma)[0]
  logits, targets = canonical(logits, targets)
  if integer:
    return focal_labels_kernel(logits, targets, alpha, gamma)
  return focal_kernel(logits, targets, alpha, gamma)


def focal_label_terms(x: Array, labels: Array, alpha: float | None, gamma: float):
  r"""Per-element sigmoid focal loss against integer labels, and its derivative.

  With :math:`t = [c = y]`, :math:`p = \sigma(x)`, :math:`q = 1 - p` and
  :math:`s = \mathrm{softplus}(x)`, :math:`\bar s = \mathrm{softplus}(-x)` (BCE is
  :math:`s` for :math:`t = 0` and :math:`\bar s` for :math:`t = 1`, each a sum of
  non-negative pieces, :func:`sigmoid_pieces`):
  :math:`\ell_0 = (1 - \alpha) p^\gamma s`,
  :math:`\ell_0' = (1 - \alpha) p^\gamma (\gamma q s + p)`,
  :math:`\ell_1 = \alpha q^\gamma \bar s`,
  :math:`\ell_1' = -\alpha q^\gamma (\gamma p \bar s + q)`. One ``exp``,
  one ``log1p`` and one division per element; the one-hot is a comparison
  with the class index inside the same loop (never materialised).
  """
  target = labels[..., None] == lax.broadcasted_iota(labels.dtype, x.shape, x.ndim - 1)
  p, q, r, lg = sigmoid_pieces(x)
  sp, sp_neg = r + lg, (r - x) + lg
  a1, a0 = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
  pg, qg = safe_pow(p, gamma), safe_pow(q, gamma)
  value = jnp.where(target, a1 * qg * sp_neg, a0 * pg * sp)
  slope = jnp.where(target, -a1 * qg * (gamma * p * sp_neg + q),
                    a0 * pg * (gamma * q * sp + p))
  return value, slope


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _focal_labels_sum(x, labels, alpha, gamma):
  return jnp.sum(focal_label_terms(x, labels, alpha, gamma)[0])


@_focal_labels_sum.defjvp
def _focal_labels_sum_jvp(alpha, gamma, primals, tangents):
  # A custom_jvp, not a custom_vjp: the value and the slope come out of one
  # pass, reverse mode stores the slope (the logits' size) and multiplies it
  # by the cotangent, and forward mode works. On the FCOS step it is 1.5x
  # faster than summing focal_labels_kernel, whose backward recomputes.
  x, labels = primals
  value, slope = focal_label_terms(x, labels, alpha, gamma)
  return jnp.sum(value), jnp.sum(slope * tangents[0])


def sigmoid_focal_sum(logits: Array, labels: Array, *, alpha: float | None = 0.25,
                      gamma: float = 2.0) -> Array:
  r"""``jnp.sum(sigmoid_focal(logits, labels))`` for integer labels, in one pass.

  The unweighted, unmasked sum (RetinaNet's and FCOS's classification term):
  forward and backward are one elementwise pass each over ``[..., C]``.

  Args:
    logits: float ``[..., C]``.
    labels: integer ``[...]`` (``[0, C)`` a class, anything else background).
    alpha: positive-class weight, or ``None`` for none.
    gamma: focusing exponent ``>= 0``.

  Returns:
    The scalar sum.
  """
  alpha = None if alpha is None else float(alpha)
  logits, labels = canonical(logits, canonical_labels(labels))
  return _focal_labels_sum(logits, labels, alpha, float(gamma))


def _bce_value(x: Array, t: Array, w: Array | None) -> Array:
  if w is None:
    return bce_parts(x, t)[0]
  _, _, r, lg = sigmoid_pieces(x)
  return (1 - t) * (r + lg) + w * t * ((r - x) + lg)


def _bce_grads(x, t):
  p, q, _, _ = sigmoid_pieces(x)
  return p_minus_t(p, q, t), -x


def _bce_weighted_grads(x, t, w):
  p, q, r, lg = sigmoid_pieces(x)
  log_q = (r - x) + lg
  return (1 - t) * p - w * t * q, w * log_q - (r + lg), t * log_q


bce_kernel = elementwise_kernel(lambda x, t: _bce_value(x, t, None), _bce_grads,
                                num_arrays=2, num_static=0)


bce_weighted_kernel = elementwise_kernel(_bce_value, _bce_weighted_grads,
                                         num_arrays=3, num_static=0)


def binary_cross_entropy(logits: Array, targets: Array,
                         pos_weight: Array | None = None) -> Array:
  r"""Per-element BCE with logits :math:`-[w\, t \log p + (1 - t) \log(1 - p)]`.

  As ``torch.nn.functional.binary_cross_entropy_with_logits``; label smoothing
  is the caller's, applied to ``targets`` beforehand.

  Args:
    logits: float ``[...]``.
    targets: float targets in ``[0, 1]``, the shape of ``logits``.
    pos_weight: ``None`` or float weight of the positive term, broadcastable
      to ``logits`` (e.g. ``[C]``).

  Returns:
    The per-element loss, the shape of ``logits``.
  """
  if pos_weight is not None:
    pos_weight = jnp.broadcast_to(jnp.asarray(pos_weight, logits.dtype), logits.shape)
  if not fused_enabled():
    return _bce_value(logits, targets, pos_weight)
  logits, targets, pos_weight = canonical(logits, targets, pos_weight)
  if pos_weight is None:
    return bce_kernel(logits, targets)
  return bce_weighted_kernel(logits, targets, pos_weight)
