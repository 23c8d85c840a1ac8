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
:func:`jaxloss._src.reduce.reduce_loss`, and masked inputs must already be
sanitised with :func:`jaxloss._src.reduce.fill_masked` (the kernels are finite for
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
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
from jax import lax

from jaxloss._src.typing import Array

__all__ = ["ElementwiseKernel", "canonical", "elementwise_kernel", "forward_mode_hint",
           "fused_enabled", "fused_kernels", "recompute_barrier", "recomputes",
           "set_fused_kernels", "summed_over_new_axes", "varying_axes"]

# The process-wide setting (set_fused_kernels), and a context-local override
# (fused_kernels) that wins inside its block; None: no override.
_GLOBAL = {"fused": True}


_FUSED: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "jaxloss_fused_kernels", default=None)


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
def fused_kernels(enabled: bool) -> Iterator[None]:
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


@contextlib.contextmanager
def forward_mode_hint() -> Iterator[None]:
  """Re-raises JAX's forward-mode error of a ``custom_vjp`` kernel with the fix named."""
  try:
    yield
  except TypeError as error:
    if "forward-mode autodiff" not in str(error):
      raise
    raise TypeError(
        "jaxloss's fused kernels are reverse-mode only (jax.custom_vjp): for jax.jvp / "
        "jax.jacfwd / jax.hessian-by-jvp, trace the loss with plain autodiff, which gives the "
        "same values and gradients: `with jaxloss.fused_kernels(False): ...`.") from error


def recompute_barrier(residuals):
  # Hides the saved inputs from XLA's CSE: otherwise the forward and backward
  # recomputations share subexpressions, which XLA:CPU then materialises as
  # full-size temporaries instead of fusing each pass into one loop.
  return lax.optimization_barrier(residuals)


def recomputes() -> bool:
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
    with forward_mode_hint():
      return (self.recompute if recomputes() else self.saved)(*args)


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
                   lambda *rest: scaled(grads(*recompute_barrier(rest[-2]), *rest[:-2]), rest[-1]))
  saved = jax.custom_vjp(value, nondiff_argnums=nondiff)
  saved.defvjp(lambda *args: (value(*args), grads(*args)),
               lambda *rest: scaled(rest[-2], rest[-1]))
  return ElementwiseKernel(recompute, saved)


def varying_axes(x: Array) -> frozenset:
  """The ``shard_map`` axes ``x`` varies over (``aval.vma`` before jax 0.10)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def summed_over_new_axes(cotangent: Array, primal_axes: frozenset) -> Array:
  """``cotangent`` summed over the ``shard_map`` axes it varies over and its primal
  (varying over ``primal_axes``) does not.

  A replicated argument (a ``class_weight`` under ``shard_map``) meets
  per-device data inside the kernel; its cotangent is the sum of the devices'
  (the transpose of the implicit broadcast), as autodiff would give.
  """
  extra = tuple(sorted(varying_axes(cotangent) - primal_axes))
  return lax.psum(cotangent, extra) if extra else cotangent


def canonical(*arrays: Any) -> tuple[Any, ...]:
  # jax.vmap inside jax.jit over a NumPy argument leaves a NumPy constant in the
  # batch tracer, which custom_vjp's batching rule rejects; x * 1 is a traced
  # value, and XLA simplifies the multiply away.
  return tuple(None if a is None else a * 1 for a in arrays)
