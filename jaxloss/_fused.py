"""One-pass kernels with analytic gradients for the hot classification and region losses.

Autodiff of a loss written in ``jnp`` keeps (or recomputes in several passes)
every intermediate of the forward pass: sigmoid, log-sigmoid, the focal
modulating factor, ... On large dense outputs (detection heads, segmentation
maps) those losses are memory bound, and the extra passes dominate. The
kernels here are ``jax.custom_vjp`` functions whose forward pass saves only its
inputs and whose backward pass recomputes the element's derivative from them
in a single elementwise pass, so a ``value_and_grad`` reads the inputs twice
and writes the gradient once.

The softmax cross-entropy also saves its per-row log-sum-exp (``1/C`` of the
logits' size). Each kernel returns the *per-element* loss (except the softmax
region statistics of Dice, Jaccard and Tversky, :func:`softmax_region_stats`,
which return per-class sums); weighting, masking and reduction stay in
:func:`jaxloss._reduce.reduce_loss`, and masked inputs must already be
sanitised with :func:`jaxloss._reduce.fill_masked` (the kernels are finite for
every finite input, so masked elements get exactly zero value and gradient
from the zero cotangent that ``reduce_loss`` sends them).

Gradients. Logits get the analytic gradient. Float targets (soft labels,
distillation) get their analytic gradient too, as do a float ``pos_weight``
and the cross-entropy's ``class_weight``; integer labels are constants.

Forward mode. ``jax.jvp`` and ``jax.jacfwd`` of a ``jax.custom_vjp`` function
(every kernel here but :func:`sigmoid_focal_sum`, a ``custom_jvp``) raise
``TypeError``. ``jax.hessian`` (``jacfwd`` over ``jacrev``) and
``jacrev(jacrev(f))`` work and are exact: the reverse pass replaces the kernel
by its backward function, which is plain ``jnp`` written so that its own
derivative stays finite for any finite logit (no ``1 / (1 - p_t)``). The
plain path's second derivative of the focal loss with a non-integer
``gamma < 1`` is not: autodiff forms ``(1 - p_t)^(gamma - 2)``, which overflows
float32 for logits of magnitude about 55 to 87 (NaN there; float64 is fine).
For forward mode, trace the loss with the plain-autodiff path (same values
and gradients)::

  with jaxloss.fused_kernels(False):
    tangent = jax.jvp(loss_fn, (logits,), (direction,))[1]

The switch is read when a function is *traced*: a function already compiled
by ``jax.jit`` keeps the path it was traced with.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss._reduce import Array, fill_masked
from jaxloss._src.labels import canonical_labels

# The process-wide setting (set_fused_kernels), and a context-local override
# (fused_kernels) that wins inside its block; None: no override.
_GLOBAL = {"fused": True}
_FUSED = contextvars.ContextVar("jaxloss_fused_kernels", default=None)


def fused_enabled() -> bool:
  """Whether losses trace the fused kernels (default) or plain autodiff."""
  local = _FUSED.get()
  return _GLOBAL["fused"] if local is None else local


def set_fused_kernels(enabled: bool) -> None:
  """Selects fused kernels (``True``, default) or plain autodiff for the whole process.

  Global: every thread sees it, including threads already running. Inside a
  :func:`fused_kernels` block (which is local to its thread or context) the
  block's setting wins until the block ends.
  """
  _GLOBAL["fused"] = bool(enabled)


@contextlib.contextmanager
def fused_kernels(enabled: bool):
  """Context manager selecting fused kernels or plain autodiff while tracing.

  ``with jaxloss.fused_kernels(False): ...`` traces the losses as plain ``jnp``
  so that forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) works; values
  and gradients are the same either way. Local to the current thread (a
  ``contextvars`` context), unlike :func:`set_fused_kernels`.
  """
  token = _FUSED.set(bool(enabled))
  try:
    yield
  finally:
    _FUSED.reset(token)


def _recompute(residuals):
  # Hides the saved inputs from XLA's CSE: otherwise the forward and backward
  # recomputations share subexpressions, which XLA:CPU then materialises as
  # full-size temporaries instead of fusing each pass into one loop.
  return lax.optimization_barrier(residuals)


def _recomputes() -> bool:
  # XLA:CPU: the forward saves the inputs and the backward recomputes the
  # gradient from them, one loop each. XLA:GPU fuses a forward that computes
  # the value and the gradient into one multi-output kernel (the loss's
  # reduction and the gradient), which reads the inputs once instead of twice:
  # 2.5 -> 3.5 TB/s for BCE on an H200 (benchmarks/gpu.sh).
  return jax.default_backend() == "cpu"


class ElementwiseKernel(NamedTuple):
  """An elementwise loss with its analytic gradient, in two ``custom_vjp`` forms.

  Called as ``kernel(*arrays, *static)``: ``recompute`` (the backward
  recomputes the gradient from the saved inputs) on CPU, ``saved`` (the
  forward computes the gradient too and saves it) elsewhere, chosen by
  ``jax.default_backend()`` while tracing; both give the same values and
  gradients.
  """
  recompute: Callable[..., Array]
  saved: Callable[..., Array]

  def __call__(self, *args):
    return (self.recompute if _recomputes() else self.saved)(*args)


def elementwise_kernel(value: Callable[..., Array], grads: Callable[..., tuple],
                       num_arrays: int, num_static: int) -> ElementwiseKernel:
  """Builds both forms of ``value(*arrays, *static)``.

  ``grads(*arrays, *static)`` returns one derivative per array (``None`` for
  an integer or constant array): the per-element slope the cotangent scales.
  """
  nondiff = tuple(range(num_arrays, num_arrays + num_static))

  def scaled(derivatives, g):
    return tuple(None if d is None else g * d for d in derivatives)

  recompute = jax.custom_vjp(value, nondiff_argnums=nondiff)
  recompute.defvjp(lambda *args: (value(*args), args[:num_arrays]),
                   lambda *rest: scaled(grads(*_recompute(rest[-2]), *rest[:-2]), rest[-1]))
  saved = jax.custom_vjp(value, nondiff_argnums=nondiff)
  saved.defvjp(lambda *args: (value(*args), grads(*args)),
               lambda *rest: scaled(rest[-2], rest[-1]))
  return ElementwiseKernel(recompute, saved)


def _varying_axes(x: Array) -> frozenset:
  """The ``shard_map`` axes ``x`` varies over (``aval.vma`` before jax 0.10)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _summed_over_new_axes(cotangent: Array, primal_axes: frozenset) -> Array:
  """``cotangent`` summed over the ``shard_map`` axes it varies over and its primal
  (varying over ``primal_axes``) does not.

  A replicated argument (a ``class_weight`` under ``shard_map``) meets
  per-device data inside the kernel; its cotangent is the sum of the devices'
  (the transpose of the implicit broadcast), as autodiff would give.
  """
  extra = tuple(sorted(_varying_axes(cotangent) - primal_axes))
  return lax.psum(cotangent, extra) if extra else cotangent


def _canonical(*arrays):
  # jax.vmap inside jax.jit over a NumPy argument leaves a NumPy constant in the
  # batch tracer, which custom_vjp's batching rule rejects; x * 1 is a traced
  # value, and XLA simplifies the multiply away.
  return tuple(None if a is None else a * 1 for a in arrays)


def _one_hot(labels: Array, num_classes: int, dtype) -> Array:
  return (labels[..., None] == lax.iota(labels.dtype, num_classes)).astype(dtype)


# ---------------------------------------------------------------------------
# Sigmoid: shared pieces


def _sigmoid_pieces(x: Array):
  """``(p, q, r, lg)``: ``p = sigmoid(x)``, ``q = sigmoid(-x)``, ``r = max(x, 0)``,
  ``lg = log1p(exp(-|x|))``.

  One ``exp`` and one ``log1p``. ``q`` is not ``1 - p`` (which cancels to 0
  for ``x > 17`` in float32), and the softplus is left in pieces,
  ``softplus(x) = r + lg`` and ``softplus(-x) = (r - x) + lg``: a BCE
  assembled as ``(r - t x) + lg`` adds two non-negative terms, where
  ``softplus(x) - t x`` cancels (0 instead of 3e-7 at ``t = 1, x = 15``).
  """
  e = jnp.exp(-jnp.abs(x))
  s = 1 / (1 + e)
  pos = x >= 0
  p = jnp.where(pos, s, e * s)
  q = jnp.where(pos, e * s, s)
  return p, q, jnp.maximum(x, 0), jnp.log1p(e)


def _sigmoid_parts(x: Array):
  """``(p, q, softplus(x))``; see :func:`_sigmoid_pieces` (and :func:`_bce_parts`
  for a BCE: ``softplus(x) - t x`` cancels at confident logits)."""
  p, q, r, lg = _sigmoid_pieces(x)
  return p, q, r + lg


def _bce_parts(x: Array, t: Array):
  """``(BCE(x, t), p, q)`` without cancellation: ``(max(x, 0) - t x) + log1p(exp(-|x|))``."""
  p, q, r, lg = _sigmoid_pieces(x)
  return (r - t * x) + lg, p, q


def _p_minus_t(p: Array, q: Array, t: Array) -> Array:
  # p - t as p (1 - t) - q t: exact where p rounds to 1 (x > 17), where p - 1 is 0.
  return p * (1 - t) - q * t


# ---------------------------------------------------------------------------
# Sigmoid focal loss


def _power(z: Array, gamma: float) -> Array:
  if gamma == 0:
    return jnp.ones_like(z)
  if float(gamma).is_integer() and 0 < gamma <= 8:
    return lax.integer_pow(z, int(gamma))
  # d(z^gamma)/dz is infinite at z = 0 for gamma < 1: keep 0 * inf out of the
  # plain-autodiff path (z is 0 only where the logit saturates).
  nonzero = z > 0
  return jnp.where(nonzero, jnp.power(jnp.where(nonzero, z, 1), gamma), 0)


def _alpha_t(t: Array, alpha: float | None):
  return 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)


def _focal_terms(x: Array, t: Array, alpha: float | None, gamma: float):
  """``(loss, p, q, ce, z, m, alpha_t)`` of the sigmoid focal loss."""
  ce, p, q = _bce_parts(x, t)
  z = p * (1 - t) + q * t
  m = _power(z, gamma)
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
  ce, p, q = _bce_parts(x, t)
  z = p * (1 - t) + q * t
  a = _alpha_t(t, alpha)
  # z^(gamma - 1) is unbounded for gamma < 1 (up to 1e38), but pq and ce
  # vanish with z (pq / z <= 1, ce / z -> 1), so each product below is bounded.
  m, m_z = _powers(z, gamma)
  dx = a * (m * _p_minus_t(p, q, t) + gamma * ce * (1 - 2 * t) * (p * q * m_z))
  dt = a * (gamma * ce * (q - p) * m_z - m * x)
  if alpha is not None:
    dt = dt + (2 * alpha - 1) * ce * m
  return dx, dt


_focal_fused = elementwise_kernel(lambda x, t, alpha, gamma: _focal_terms(x, t, alpha, gamma)[0],
                                  _focal_grads, num_arrays=2, num_static=2)


def _focal_labels_value(x, labels, alpha, gamma):
  return _focal_terms(x, _one_hot(labels, x.shape[-1], x.dtype), alpha, gamma)[0]


def _focal_labels_grads(x, labels, alpha, gamma):
  return _focal_grads(x, _one_hot(labels, x.shape[-1], x.dtype), alpha, gamma)[0], None


_focal_labels_fused = elementwise_kernel(_focal_labels_value, _focal_labels_grads,
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
      targets = _one_hot(targets, logits.shape[-1], logits.dtype)
    return _focal_terms(logits, targets, alpha, gamma)[0]
  logits, targets = _canonical(logits, targets)
  if integer:
    return _focal_labels_fused(logits, targets, alpha, gamma)
  return _focal_fused(logits, targets, alpha, gamma)


def _focal_label_terms(x: Array, labels: Array, alpha: float | None, gamma: float):
  r"""Per-element sigmoid focal loss against integer labels, and its derivative.

  With :math:`t = [c = y]`, :math:`p = \sigma(x)`, :math:`q = 1 - p` and
  :math:`s = \mathrm{softplus}(x)`, :math:`\bar s = \mathrm{softplus}(-x)` (BCE is
  :math:`s` for :math:`t = 0` and :math:`\bar s` for :math:`t = 1`, each a sum of
  non-negative pieces, :func:`_sigmoid_pieces`):
  :math:`\ell_0 = (1 - \alpha) p^\gamma s`,
  :math:`\ell_0' = (1 - \alpha) p^\gamma (\gamma q s + p)`,
  :math:`\ell_1 = \alpha q^\gamma \bar s`,
  :math:`\ell_1' = -\alpha q^\gamma (\gamma p \bar s + q)`. One ``exp``,
  one ``log1p`` and one division per element; the one-hot is a comparison
  with the class index inside the same loop (never materialised).
  """
  target = labels[..., None] == lax.broadcasted_iota(labels.dtype, x.shape, x.ndim - 1)
  p, q, r, lg = _sigmoid_pieces(x)
  sp, sp_neg = r + lg, (r - x) + lg
  a1, a0 = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
  pg, qg = _power(p, gamma), _power(q, gamma)
  value = jnp.where(target, a1 * qg * sp_neg, a0 * pg * sp)
  slope = jnp.where(target, -a1 * qg * (gamma * p * sp_neg + q),
                    a0 * pg * (gamma * q * sp + p))
  return value, slope


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _focal_labels_sum(x, labels, alpha, gamma):
  return jnp.sum(_focal_label_terms(x, labels, alpha, gamma)[0])


@_focal_labels_sum.defjvp
def _focal_labels_sum_jvp(alpha, gamma, primals, tangents):
  # A custom_jvp, not a custom_vjp: the value and the slope come out of one
  # pass, reverse mode stores the slope (the logits' size) and multiplies it
  # by the cotangent, and forward mode works. On the FCOS step it is 1.5x
  # faster than summing _focal_labels_fused, whose backward recomputes.
  x, labels = primals
  value, slope = _focal_label_terms(x, labels, alpha, gamma)
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
  logits, labels = _canonical(logits, canonical_labels(labels))
  return _focal_labels_sum(logits, labels, alpha, float(gamma))


# ---------------------------------------------------------------------------
# Binary cross-entropy with logits


def _bce_value(x: Array, t: Array, w: Array | None) -> Array:
  if w is None:
    return _bce_parts(x, t)[0]
  _, _, r, lg = _sigmoid_pieces(x)
  return (1 - t) * (r + lg) + w * t * ((r - x) + lg)


def _bce_grads(x, t):
  p, q, _, _ = _sigmoid_pieces(x)
  return _p_minus_t(p, q, t), -x


def _bce_weighted_grads(x, t, w):
  p, q, r, lg = _sigmoid_pieces(x)
  log_q = (r - x) + lg
  return (1 - t) * p - w * t * q, w * log_q - (r + lg), t * log_q


_bce_fused = elementwise_kernel(lambda x, t: _bce_value(x, t, None), _bce_grads,
                                num_arrays=2, num_static=0)
_bce_weighted_fused = elementwise_kernel(_bce_value, _bce_weighted_grads,
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
  logits, targets, pos_weight = _canonical(logits, targets, pos_weight)
  if pos_weight is None:
    return _bce_fused(logits, targets)
  return _bce_weighted_fused(logits, targets, pos_weight)


# ---------------------------------------------------------------------------
# Softmax cross-entropy with integer labels


def _logsumexp(x: Array, valid: Array | None = None) -> Array:
  """Row log-sum-exp; rows where ``valid`` is False get 0 (whatever their logits).

  Their shift is 0 instead of the row maximum, so an inf logit there gives
  ``exp(inf) = inf`` rather than ``inf - inf``: no NaN is formed (which
  ``jax_debug_nans`` would report). Row-level selects only: an elementwise
  fill of the logits is not fused into the reductions by XLA:CPU (2x slower).
  """
  m = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  if valid is not None:
    m = jnp.where(valid[..., None], m, 0)
  lse = (m + jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True)))[..., 0]
  return lse if valid is None else jnp.where(valid, lse, 0)


def _finite(x: Array) -> Array:
  # +-inf -> +-max, so that a masked row's sum cannot form inf - inf; a no-op
  # on finite values.
  big = jnp.finfo(x.dtype).max
  return jnp.clip(x, -big, big)


def _pick(values: Array, labels: Array) -> Array:
  """``values[..., label]`` per row, 0 for labels outside ``[0, C)``.

  A gather reads one element per row; the one-hot product reads the whole row
  again (a full extra pass), but is what plain autodiff differentiates
  without a scatter.
  """
  return jnp.take_along_axis(values, labels[..., None], axis=-1, mode="fill",
                             fill_value=0)[..., 0]


def _ce_terms(x, labels, class_weight, smoothing, gather, valid=None):
  """``(loss, lse)`` of the per-row softmax cross-entropy; 0 in rows not ``valid``."""
  c = x.shape[-1]
  lse = _logsumexp(x, valid)
  if gather:
    x_y = _pick(x, labels)
  else:
    x_y = jnp.sum(_one_hot(labels, c, x.dtype) * x, axis=-1)
  if valid is not None:
    x_y = jnp.where(valid, x_y, 0)
    x = _finite(x) if smoothing else x
  if class_weight is None:
    loss = lse - x_y
    if smoothing:
      loss = (1 - smoothing) * loss + smoothing * (lse - jnp.mean(x, axis=-1))
    return loss, lse
  if gather:
    w_y = jnp.take(class_weight, labels, mode="fill", fill_value=0)
  else:
    w_y = jnp.sum(_one_hot(labels, c, x.dtype) * class_weight, axis=-1)
  loss = w_y * (lse - x_y)
  if smoothing:
    smooth = jnp.sum(class_weight, -1) * lse - jnp.sum(class_weight * x, axis=-1)
    loss = (1 - smoothing) * loss + smoothing / c * smooth
  return loss, lse


def _ce_grad(x, labels, lse, class_weight, smoothing):
  c = x.shape[-1]
  onehot = _one_hot(labels, c, x.dtype)
  # softmax: x - lse <= 0 in every counted row; the clamp keeps a masked row
  # (lse 0, logits up to inf) finite, so its zero cotangent gives 0, not NaN.
  s = jnp.exp(jnp.minimum(x - lse[..., None], 0))
  if class_weight is None:
    return (s - onehot) if not smoothing else s - (1 - smoothing) * onehot - smoothing / c
  w_y = jnp.sum(onehot * class_weight, axis=-1, keepdims=True)
  dx = w_y * (s - onehot)
  if smoothing:
    total = jnp.sum(class_weight, -1)
    dx = (1 - smoothing) * dx + smoothing / c * (total * s - class_weight)
  return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ce_fused(x, labels, class_weight, where, smoothing):
  return _ce_fwd(x, labels, class_weight, where, smoothing)[0]


def _ce_fwd(x, labels, class_weight, where, smoothing):
  loss, lse = _ce_terms(x, labels, class_weight, smoothing, gather=True, valid=where)
  # lse is one value per row (1/C of the logits): saving it spares the
  # backward pass two reductions over the logits.
  # The axes class_weight varies over ride in the residuals' tree structure
  # (dict keys, no leaves): under shard_map the saved copy itself varies.
  axes = None if class_weight is None else dict.fromkeys(sorted(_varying_axes(class_weight)))
  return fill_masked(loss, where), (x, labels, class_weight, where, lse, axes)


def _ce_class_weight_grad(x, labels, lse, g, smoothing, valid):
  r"""``d/dw_c`` of :math:`\sum_i g_i \ell_i`: the rows' cross-entropies summed per class.

  :math:`\partial \ell_i / \partial w_c = (1 - \varepsilon) [y_i = c] (\mathrm{lse}_i - x_{iy_i})
  + \frac{\varepsilon}{C} (\mathrm{lse}_i - x_{ic})`; a scatter-add over the
  labels (and one column sum with smoothing). XLA drops it when
  ``class_weight`` needs no gradient.
  """
  c = x.shape[-1]
  x_y = fill_masked(_pick(x, labels), valid)
  nll = (g * (lse - x_y)).reshape(-1)
  dw = jnp.zeros((c,), x.dtype).at[labels.reshape(-1)].add((1 - smoothing) * nll, mode="drop")
  if smoothing:
    rows = g[..., None] * (lse[..., None] - _finite(x))
    dw = dw + smoothing / c * jnp.sum(rows.reshape(-1, c), axis=0)
  return dw


def _ce_bwd(smoothing, res, g):
  *arrays, weight_axes = res
  x, labels, class_weight, where, lse = _recompute(tuple(arrays))
  g = fill_masked(g, where)
  dx = g[..., None] * _ce_grad(x, labels, lse, class_weight, smoothing)
  if where is not None:
    # Masked rows have a zero cotangent and a finite gradient factor, unless
    # a logit is NaN (0 * NaN). Selecting on the element's own NaN is free; a
    # select on the row mask broadcast over C is not vectorised by XLA:CPU.
    dx = jnp.where(jnp.isnan(dx), 0, dx)
  dw = None
  if class_weight is not None:
    dw = _summed_over_new_axes(_ce_class_weight_grad(x, labels, lse, g, smoothing, where),
                               frozenset(weight_axes))
  return dx, None, dw, None


_ce_fused.defvjp(_ce_fwd, _ce_bwd)


def softmax_cross_entropy(logits: Array, labels: Array, *, class_weight: Array | None = None,
                          label_smoothing: float = 0.0, where: Array | None = None) -> Array:
  r"""Per-row softmax cross-entropy with integer labels.

  :math:`\ell = (1 - \varepsilon)\, w_y (\mathrm{lse}(x) - x_y) +
  \frac{\varepsilon}{C} \sum_c w_c (\mathrm{lse}(x) - x_c)`, which is
  ``torch.nn.functional.cross_entropy`` per element (``w = 1`` without
  ``class_weight``). Labels outside ``[0, C)`` give an all-zero one-hot row
  (finite loss ``lse(x)``); the caller masks them (``ignore_index``).

  Args:
    logits: float ``[..., C]``.
    labels: integer ``[...]``.
    class_weight: ``None`` or float ``[C]`` (with its exact gradient).
    label_smoothing: :math:`\varepsilon`.
    where: ``None`` or boolean ``[...]``: rows where it is ``False`` get
      loss 0 and gradient 0 whatever their logits (NaN/inf included), as
      :func:`jaxloss._reduce.fill_masked` would give, with no NaN formed
      from infinite logits (``jax_debug_nans`` stays quiet; a NaN logit is
      NaN already). The caller still masks the reduction (``reduce_loss``).

  Returns:
    The per-row loss ``[...]``.
  """
  smoothing = float(label_smoothing)
  labels = canonical_labels(labels)
  if class_weight is not None:
    class_weight = jnp.asarray(class_weight, logits.dtype)
  if not fused_enabled():
    return _ce_terms(fill_masked(logits, where), labels, class_weight, smoothing, gather=False)[0]
  logits, labels, class_weight = _canonical(logits, labels, class_weight)
  return _ce_fused(logits, labels, class_weight, where, smoothing)


# ---------------------------------------------------------------------------
# Softmax region statistics (Dice, Jaccard, Tversky) with integer labels
#
# XLA:CPU hands reductions with cheap elementwise producers (exp, add, mul,
# max, abs, broadcast; no compare, select or gather) to its YNN fusion, which
# evaluates exp several times faster than a loop fusion does. The kernel is
# written so that each pass over the [B, N, C] logits is one such fusion:
# the row log-sum-exp, the per-class column sum of the probabilities, and the
# backward pass (a row reduction and the elementwise gradient). The label's
# probability is a gather ([B, N]); the per-class sums over labels are
# scatter-adds of [B, N] values. Autodiff of the one-hot formula instead
# materialises the one-hot, the masked probabilities and the backward
# products as [B, N, C] loop fusions (2x slower on [8, 256, 256, 21]).


def _row_max_log_sum(x: Array) -> tuple[Array, Array]:
  """``(m, log sum exp(x - m))`` per row, ``m`` the row maximum."""
  m = jnp.max(x, axis=-1)
  return m, jnp.log(jnp.sum(jnp.exp(x - m[..., None]), axis=-1))


def _label_indicator(label: Array, num_classes: int) -> Array:
  r"""``[y = c]`` as ``max(1 - |y - c|, 0)`` on float labels ``[B, N]`` -> ``[B, N, C]``.

  The same 0/1 values as the comparison, in operations that stay inside the
  YNN fusion (a compare and select would split the backward pass in two).
  """
  c = lax.broadcasted_iota(label.dtype, label.shape + (num_classes,), label.ndim)
  return jnp.maximum(1 - jnp.abs(label[..., None] - c), 0)


def _per_class_sums(values: Array, labels: Array, num_classes: int) -> Array:
  """``out[b, c, k] = sum_n values[b, n, k] [labels[b, n] = c]``; labels ``C`` are dropped."""
  zeros = jnp.zeros((values.shape[0], num_classes) + values.shape[2:], values.dtype)
  image = lax.broadcasted_iota(labels.dtype, labels.shape, 0)
  return zeros.at[image, labels].add(values, mode="drop")


# Rows whose log-sum-exp reaches this magnitude take the two-step form
# (x - m) - log_sum: below it, x - lse has a rounding error of at most
# ulp(32) / 2 = 1e-6, relative, in the probabilities.
_LSE_EXACT_BELOW = 32.0


def _log_probs(x: Array, shift: Array, log_sum: Array | None) -> Array:
  """``log softmax(x)`` from a row shift: the log-sum-exp, or the max and ``log_sum``.

  The one-step form ``x - lse`` costs one broadcast operand less (5-10% of
  the loss on XLA:CPU), but ``lse = m + log_sum`` rounds to the ulp of ``m``: a
  relative error of 5e-4 in the probabilities for logits of 1e4.
  """
  if log_sum is None:
    return x - shift[..., None]
  return (x - shift[..., None]) - log_sum[..., None]


def _pred_sums(x: Array, labels: Array, m: Array, log_sum: Array | None, squared: bool):
  """``(P, shift)``: ``P`` ``[B, C]`` and the row shift of the backward pass.

  ``m`` is the row log-sum-exp (``log_sum`` None), or the row maximum.
  """
  # An uncounted row gets an infinite shift: exp(x - inf) = 0 masks it inside
  # the fused reduction (a select would not fuse). Its logits must be finite
  # (else inf - inf); _region_stats_fwd routes the rare other case to a
  # sanitised copy.
  shift = jnp.where(labels < x.shape[-1], m, jnp.inf)
  z = _log_probs(x, shift, log_sum)
  return jnp.sum(jnp.exp(2 * z if squared else z), axis=1), shift


def _label_sums(x: Array, labels: Array, shift: Array, log_sum: Array) -> tuple[Array, Array]:
  """``(I, T)``, each ``[B, C]``: the label's probability gathered, summed per class."""
  c = x.shape[-1]
  valid = labels < c
  picked = jnp.take_along_axis(x, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  # an uncounted row's shift is inf: its picked logit is zeroed first (no inf - inf)
  p_label = jnp.exp((jnp.where(valid, picked, 0) - shift) - log_sum)
  sums = _per_class_sums(jnp.stack([p_label, valid.astype(x.dtype)], axis=-1), labels, c)
  return sums[..., 0], sums[..., 1]


def _region_grad(x: Array, labels: Array, shift: Array, log_sum: Array | None,
                 g_inter: Array, g_pred: Array, squared: bool) -> Array:
  r"""``d/dx`` of :math:`\sum_c a_c I_c + b_c P_c` through the softmax.

  With :math:`g_{nc} = a_c [y_n = c] + b_c \partial P_c / \partial p_{nc}`,
  :math:`\partial / \partial x_{nc} = p_{nc} (g_{nc} - \sum_k p_{nk} g_{nk})`.
  """
  c = x.shape[-1]
  label = jnp.where(labels < c, labels, -2).astype(x.dtype)
  p = jnp.exp(_log_probs(x, shift, log_sum))
  b = g_pred[:, None, :]
  g = (2 * b * p if squared else b) + _label_indicator(label, c) * g_inter[:, None, :]
  return p * (g - jnp.sum(p * g, axis=-1, keepdims=True))


# Branches of the kernel: the fast one-step form; the two-step form for large
# logits; the two-step form on a copy whose uncounted rows are zeroed.
_ONE_STEP, _TWO_STEP, _SANITISED = range(3)


# Rows whose clipped log-sum-exp reaches this are sanitised when uncounted:
# +-inf logits clip to +-finfo.max (see _row_lse).
_SANITISE_FROM = 1e37


def _row_lse(x: Array) -> Array:
  """The row log-sum-exp of ``x`` clipped to finite floats, so that a row with an
  infinite logit (e.g. an ignored pixel) forms no ``inf - inf`` under
  ``jax_debug_nans``; finite rows are unchanged. Two cheap elementwise ops inside
  the fused reduction."""
  big = jnp.finfo(x.dtype).max
  return _logsumexp(jnp.maximum(-jnp.maximum(-x, -big), -big))


def _branch(lse: Array, counted: Array) -> Array:
  # Uncounted rows may hold anything (NaN, inf): only then is their clipped
  # log-sum-exp NaN or beyond 1e37.
  sanitise = jnp.any(~counted & ~(jnp.abs(lse) < _SANITISE_FROM))
  large = jnp.any(counted & (jnp.abs(lse) >= _LSE_EXACT_BELOW))
  return jnp.where(sanitise, _SANITISED, jnp.where(large, _TWO_STEP, _ONE_STEP))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _region_stats_fused(x, labels, squared):
  return _region_stats_fwd(x, labels, squared)[0]


def _region_stats_fwd(x, labels, squared):
  # The one-step branch needs only the log-sum-exp (one fused pass: the row
  # maximum stays inside it); the others recompute the maximum separately.
  lse = _row_lse(x)
  branch = _branch(lse, labels < x.shape[-1])

  def one_step(x):
    return (*_pred_sums(x, labels, lse, None, squared), jnp.zeros_like(lse))

  def two_step(x):
    m, log_sum = _row_max_log_sum(x)
    return (*_pred_sums(x, labels, m, log_sum, squared), log_sum)

  pred, shift, log_sum = lax.switch(
      branch, [one_step, two_step, lambda x: two_step(fill_masked(x, labels < x.shape[-1]))], x)
  inter, count = _label_sums(x, labels, shift, log_sum)
  return (inter, pred, count), (x, labels, shift, log_sum, branch)


def _region_stats_bwd(squared, res, g):
  x, labels, shift, log_sum, branch = _recompute(res)
  g_inter, g_pred, _ = g
  grad = functools.partial(_region_grad, labels=labels, shift=shift, g_inter=g_inter,
                           g_pred=g_pred, squared=squared)
  dx = lax.switch(branch, [
      lambda x: grad(x, log_sum=None),
      lambda x: grad(x, log_sum=log_sum),
      lambda x: grad(fill_masked(x, labels < x.shape[-1]), log_sum=log_sum)], x)
  return dx, None


_region_stats_fused.defvjp(_region_stats_fwd, _region_stats_bwd)


def region_kernel_pays() -> bool:
  """Whether the softmax region kernel beats plain autodiff on the default backend.

  Its per-class sums are scatter-adds into ``[B, C]``, one loop on XLA:CPU
  (0.72-0.77x optax's dice there) but atomics on a GPU, where plain autodiff
  is faster (H200, ``[128, 256, 256, 21]``: 2.65 ms against the kernel's 3.07).
  """
  return jax.default_backend() == "cpu"


def softmax_region_stats(logits: Array, labels: Array, valid: Array | None, *,
                         squared: bool = False) -> tuple[Array, Array, Array]:
  r"""Per-image soft counts of the softmax against integer labels, one-hot free.

  With :math:`p = \mathrm{softmax}(x)` over the last axis and
  :math:`v_n` the pixel mask:

  .. math::
     I_{bc} = \sum_n v_n p_{nc} [y_n = c], \quad
     P_{bc} = \sum_n v_n p_{nc}^{k}, \quad T_{bc} = \sum_n v_n [y_n = c],

  :math:`k = 2` with ``squared``. A ``jax.custom_vjp``: the forward pass
  saves the logits and the row log-sum-exp; the backward pass recomputes the
  softmax and applies its Jacobian,
  :math:`\partial x_{nc} = p_{nc} (g_{nc} - \sum_k p_{nk} g_{nk})` with
  :math:`g_{nc} = \bar I_c [y_n = c] + \bar P_c\, \partial p^k_{nc} / \partial p_{nc}`,
  in one fused pass. Masked pixels (``valid`` False, or a label outside
  ``[0, C)``) contribute 0 to the value and the gradient whatever their
  logits (NaN included). ``T`` is a constant.

  A runtime switch picks one of three forms: ``x - lse`` (every counted
  row's :math:`|\mathrm{lse}| < 32`, the fast one), ``(x - max) - log_sum``
  (larger logits, about 5% slower), and the latter on a copy with the masked
  rows zeroed (a masked row with a non-finite logit; one more pass). Under
  ``jax.vmap`` the switch index is batched and all three run.

  Args:
    logits: float ``[B, N, C]``.
    labels: integer ``[B, N]``.
    valid: ``None`` or boolean ``[B, N]``.
    squared: :math:`\sum p^2` for ``P``.

  Returns:
    ``(I, P, T)``, each ``[B, C]``.
  """
  c = logits.shape[-1]
  labels = canonical_labels(labels)
  in_range = (labels >= 0) & (labels < c)
  counted = in_range if valid is None else in_range & valid
  labels = jnp.where(counted, labels, c).astype(jnp.int32)
  logits, labels = _canonical(logits, labels)
  return _region_stats_fused(logits, labels, bool(squared))
