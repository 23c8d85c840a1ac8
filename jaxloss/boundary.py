r"""Distance-based segmentation losses: the signed distance map and the boundary loss.

:func:`signed_distance_map` is an exact Euclidean distance transform inside
``jit`` with static shapes: the squared distance to the nearest pixel of a set
is separable (Felzenszwalb & Huttenlocher 2012,
https://doi.org/10.4086/toc.2012.v008a019), so one exact min-plus pass per
spatial axis,

.. math::
   g_{k+1}(x) = \min_{y} \left( g_k(x \text{ with } x_k \to y) + (x_k - y)^2 \right),

starting from :math:`g_0 = 0` on the set and a large finite value off it,
gives the squared distance after the last axis. Squared distances are integers,
exact in float32 up to :math:`2^{24}`, so the only rounding is the final square
root's: the result equals ``scipy.ndimage.distance_transform_edt`` to float32
rounding. Each pass costs :math:`O(n_k)` per pixel (a dense min over the axis),
which is what makes it static-shape and accelerator-friendly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import segmentation
from jaxloss._reduce import (
    Array,
    ArrayLike,
    as_float,
    broadcast_mask,
    check_choice,
    fill_masked,
    reduce_loss,
)


def _min_plus_pass(g: Array, axis: int) -> Array:
  """``min_y g[.., y, ..] + (x - y)^2`` along ``axis`` (exact for integer-valued ``g``)."""
  g = jnp.moveaxis(g, axis, -1)
  n = g.shape[-1]
  pos = jnp.arange(n, dtype=g.dtype)
  cost = jnp.square(pos[:, None] - pos[None, :])  # [x, y]
  out = jnp.min(g[..., None, :] + cost, axis=-1)
  return jnp.moveaxis(out, -1, axis)


def _squared_edt(inside: Array, big: float) -> Array:
  """Squared distance from each pixel of one image to the nearest ``inside`` pixel."""
  g = jnp.where(inside, 0.0, big).astype(jnp.float32)
  for axis in range(inside.ndim):
    g = _min_plus_pass(g, axis)
  return g


def signed_distance_map(mask: ArrayLike) -> Array:
  r"""Signed Euclidean distance map of binary masks, exact and jittable.

  .. math::
     \phi(x) = \mathrm{edt}(\lnot M)(x) - \mathrm{edt}(M)(x),

  the distance (in pixels) from each pixel to the nearest pixel of the other
  region: positive outside the mask, negative inside, and 0 everywhere for an
  empty or a full mask. ``edt`` is ``scipy.ndimage.distance_transform_edt``
  (equal to float32 rounding; see the module docstring for the method). The
  map of Kervadec et al.'s boundary loss (https://arxiv.org/abs/1812.07032).
  No gradient flows through it (it is a function of a boolean mask).

  Args:
    mask: ``[B, ...]`` masks (bool, or numbers read as ``!= 0``): each image
      ``mask[b]`` is transformed over all its axes (1-D, 2-D, 3-D, ...).

  Returns:
    ``[B, ...]`` float32 signed distances.
  """
  mask = jnp.asarray(mask)
  if mask.ndim < 2:
    raise ValueError(f"mask must be [B, ...] with at least one spatial axis, got shape "
                     f"{mask.shape}.")
  mask = mask != 0
  big = float(sum(n * n for n in mask.shape[1:]) + 1)
  if big >= 2.0 ** 24:
    raise ValueError(f"mask of spatial shape {mask.shape[1:]} is too large for exact float32 "
                     "squared distances (sum of squared sides must stay below 2**24).")

  def one(m):
    outside = jnp.sqrt(_squared_edt(m, big))  # distance of background pixels to the mask
    inside = jnp.sqrt(_squared_edt(~m, big))  # distance of mask pixels to the background
    mixed = jnp.any(m) & jnp.any(~m)
    return jnp.where(mixed, outside - inside, 0.0)

  return jax.lax.map(one, mask)


def boundary_loss(logits: ArrayLike, dist_maps: ArrayLike, *,
                  activation: str | None = "softmax", include_background: bool = False,
                  weight=None, where=None, reduction: str = "mean", avg_factor=None,
                  axis_name=None) -> Array:
  r"""Boundary loss (Kervadec et al., MIDL 2019), on given signed distance maps.

  .. math::
     \ell_{ic} = p_{ic}\, \phi_{ic},

  the probability of class :math:`c` at pixel :math:`i` times the signed
  distance of that pixel to the class's ground-truth region (negative inside,
  :func:`signed_distance_map`), averaged over pixels and kept classes (the
  authors' ``SurfaceLoss``: ``(probs * dist_maps).mean()`` over the foreground
  classes). The distance maps are targets computed once per label, e.g.
  ``jnp.moveaxis(jax.vmap(signed_distance_map, -1, -1)(one_hot), ...)``; no
  gradient flows into them. https://arxiv.org/abs/1812.07032

  Args:
    logits: ``[B, ..., C]`` logits (probabilities with ``activation=None``).
    dist_maps: ``[B, ..., C]`` signed distance maps, one per class.
    activation: ``"softmax"``, ``"sigmoid"`` or ``None``.
    include_background: keep class 0 (the paper scores the foreground only;
      with ``C == 1`` the channel is the foreground and is kept).
    weight, where, reduction, avg_factor, axis_name: see
      :func:`jaxloss.reduce_loss`; the per-element loss is ``[B, ..., C']`` and
      ``where`` (``[B, ...]`` pixels, or that shape) removes elements.

  Returns:
    ``[B, ..., C']`` for ``reduction="none"``, else a scalar.
  """
  check_choice("activation", activation, segmentation.ACTIVATIONS)
  logits = as_float(logits)
  dist = jax.lax.stop_gradient(as_float(dist_maps))
  if dist.shape != logits.shape:
    raise ValueError(f"dist_maps of shape {dist.shape} must match logits {logits.shape} "
                     "(one signed distance map per class, channels-last).")
  mask = broadcast_mask(where, logits.shape)
  if mask is not None:
    logits = fill_masked(logits, jnp.any(mask, axis=-1))
  probs = segmentation._activate(logits, activation)
  loss = probs * jnp.where(jnp.isfinite(dist), dist, 0)
  if not include_background and logits.shape[-1] > 1:
    loss = loss[..., 1:]
    mask = None if mask is None else mask[..., 1:]
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)

