"""Softmax kernels: cross entropy with integer labels and the per-class region statistics
of Dice, Jaccard and Tversky.

See :mod:`jaxloss._src.kernels.core` for how a kernel and its plain-autodiff path are chosen.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss._src.kernels.core import (
    canonical,
    forward_mode_hint,
    fused_enabled,
    recompute_barrier,
    summed_over_new_axes,
    varying_axes,
)
from jaxloss._src.labels import canonical_labels, one_hot
from jaxloss._src.reduce import fill_masked
from jaxloss._src.typing import Array

__all__ = ["region_kernel_pays", "softmax_cross_entropy", "softmax_region_stats"]


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
    x_y = jnp.sum(one_hot(labels, c, x.dtype) * x, axis=-1)
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
    weights = jnp.broadcast_to(class_weight, x.shape)
    w_y = jnp.sum(one_hot(labels, c, x.dtype) * weights, axis=-1)
  loss = w_y * (lse - x_y)
  if smoothing:
    weights = jnp.broadcast_to(class_weight, x.shape)
    smooth = jnp.sum(class_weight, -1) * lse - jnp.sum(weights * x, axis=-1)
    loss = (1 - smoothing) * loss + smoothing / c * smooth
  return loss, lse


def _ce_grad(x, labels, lse, class_weight, smoothing):
  c = x.shape[-1]
  onehot = one_hot(labels, c, x.dtype)
  # softmax: x - lse <= 0 in every counted row; the clamp keeps a masked row
  # (lse 0, logits up to inf) finite, so its zero cotangent gives 0, not NaN.
  s = jnp.exp(jnp.minimum(x - lse[..., None], 0))
  if class_weight is None:
    return (s - onehot) if not smoothing else s - (1 - smoothing) * onehot - smoothing / c
  weights = jnp.broadcast_to(class_weight, x.shape)
  w_y = jnp.sum(onehot * weights, axis=-1, keepdims=True)
  dx = w_y * (s - onehot)
  if smoothing:
    total = jnp.sum(class_weight, -1)
    dx = (1 - smoothing) * dx + smoothing / c * (total * s - weights)
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
  axes = None if class_weight is None else dict.fromkeys(sorted(varying_axes(class_weight)))
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
  x, labels, class_weight, where, lse = recompute_barrier(tuple(arrays))
  g = fill_masked(g, where)
  dx = g[..., None] * _ce_grad(x, labels, lse, class_weight, smoothing)
  if where is not None:
    # Masked rows have a zero cotangent and a finite gradient factor, unless
    # a logit is NaN (0 * NaN). Selecting on the element's own NaN is free; a
    # select on the row mask broadcast over C is not vectorised by XLA:CPU.
    dx = jnp.where(jnp.isnan(dx), 0, dx)
  dw = None
  if class_weight is not None:
    dw = summed_over_new_axes(_ce_class_weight_grad(x, labels, lse, g, smoothing, where),
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
      :func:`jaxloss._src.reduce.fill_masked` would give, with no NaN formed
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
  logits, labels, class_weight = canonical(logits, labels, class_weight)
  with forward_mode_hint():
    return _ce_fused(logits, labels, class_weight, where, smoothing)


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


_SANITISE_FROM = 1e37
_ONE_STEP, _TWO_STEP, _SANITISED = range(3)


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
  x, labels, shift, log_sum, branch = recompute_barrier(res)
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
  logits, labels = canonical(logits, labels)
  with forward_mode_hint():
    return _region_stats_fused(logits, labels, bool(squared))
