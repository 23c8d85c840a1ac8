r"""Exact minimum-cost bipartite matching of queries to padded targets, inside ``jit``.

The solver is the shortest augmenting path algorithm of Jonker and Volgenant
(1987) in the form of Crouse (2016), the one behind
``scipy.optimize.linear_sum_assignment``: targets are added one at a time, each
by a Dijkstra search over the queries on reduced costs
:math:`C_{ij} - u_i - v_j`, which keeps the partial assignment optimal. The
real targets (``valid``) are first moved, in their order, to the front, and the
loop runs over them only (a traced trip count): the work is
:math:`O(n^2 Q)` for :math:`n` real targets, whatever the padded size ``M``,
and one compilation serves every :math:`n`. Each Dijkstra step is one
vectorised pass over the ``Q`` queries.

References:
  Jonker and Volgenant, *A shortest augmenting path algorithm for dense and
  sparse linear assignment problems*, Computing 38 (1987).
  Crouse, *On implementing 2D rectangular assignment algorithms*, IEEE TAES 52
  (2016), https://doi.org/10.1109/TAES.2016.140952.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxloss._src.checks import check_choice
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike

METHODS = ("jit", "host")


class Matching(NamedTuple):
  """A matching of ``Q`` queries to ``M`` padded targets.

  Attributes:
    query_index: ``[..., M]`` int32, the query matched to each target (0 for
      padded targets).
    target_index: ``[..., Q]`` int32, the target matched to each query, -1 for
      unmatched queries.
    valid: ``[..., M]`` bool, which targets are real (and so matched).
  """
  query_index: Array
  target_index: Array
  valid: Array


class _Search(NamedTuple):
  """State of one Dijkstra search for an augmenting path."""
  row: Array           # the row whose edges are scanned next
  min_value: Array     # distance of the last column reached
  sink: Array          # the unassigned column reached (-1 while searching)
  dist: Array          # [Q] shortest distance to each column
  path: Array          # [Q] the row before each column on its shortest path
  cols_seen: Array     # [Q] columns reached


class _Solver(NamedTuple):
  """State of the loop over the rows (the real targets)."""
  k: Array
  u: Array             # [n] row duals
  v: Array             # [Q] column duals
  col4row: Array       # [n]
  row4col: Array       # [Q]


def _full(like: Array, shape: tuple, value, dtype) -> Array:
  """``jnp.full`` that varies over the ``shard_map`` axes that ``like`` varies over, as
  ``lax.while_loop`` needs for carries that its body makes varying."""
  return jnp.full_like(like, value, dtype=dtype, shape=shape)


def _sanitize(cost: Array, valid: Array) -> Array:
  """Real non-finite costs of ``cost [Q, M]`` to the largest finite real cost; padding to 0."""
  keep = jnp.isfinite(cost) & valid[None, :]
  largest = jnp.max(jnp.where(keep, cost, -jnp.inf), initial=-jnp.inf)
  largest = jnp.where(jnp.isfinite(largest), largest, 0)
  return jnp.where(keep, cost, jnp.where(valid[None, :], largest, 0))


def _lexmin(a, b):
  """The lexicographically smaller of two ``(key, code)`` pairs."""
  take_a = (a[0] < b[0]) | ((a[0] == b[0]) & (a[1] < b[1]))
  return jnp.where(take_a, a[0], b[0]), jnp.where(take_a, a[1], b[1])


def _search_step(cost: Array, state: _Solver, s: _Search) -> _Search:
  """Scans the edges of ``s.row`` and settles the nearest unreached column."""
  q = cost.shape[1]
  reduced = s.min_value + cost[s.row] - state.u[s.row] - state.v
  # A column still without a path takes any edge, so that a path exists even
  # when a distance overflows to inf.
  better = ~s.cols_seen & ((reduced < s.dist) | (s.path < 0))
  dist = jnp.where(better, reduced, s.dist)
  path = jnp.where(better, s.row, s.path)
  # One variadic reduction finds the nearest unreached column, an unassigned
  # one first among ties (it ends the search), then the lowest index: each
  # reduction is a kernel of its own, and kernels are what XLA compiles slowly.
  column = jnp.arange(q, dtype=jnp.int32)
  code = column + q * jnp.where(s.cols_seen, 2, (state.row4col >= 0).astype(jnp.int32))
  lowest, code = lax.reduce((jnp.where(s.cols_seen, jnp.inf, dist), code),
                            (jnp.asarray(jnp.inf, dist.dtype), jnp.int32(3 * q)), _lexmin, (0,))
  j = code % q
  assigned = state.row4col[j]
  return _Search(row=jnp.where(assigned < 0, s.row, assigned), min_value=lowest,
                 sink=jnp.where(assigned < 0, j, jnp.int32(-1)), dist=dist, path=path,
                 cols_seen=s.cols_seen | (column == j))


def _augment(path: Array, sink: Array, col4row: Array, row4col: Array):
  """Flips the assignment along the path from ``sink`` back to the new row (whose
  ``col4row`` is -1, which ends the walk)."""

  def body(carry):
    j, col4row, row4col = carry
    i = path[j]
    return col4row[i], col4row.at[i].set(j), row4col.at[j].set(i)

  _, col4row, row4col = lax.while_loop(lambda c: c[0] >= 0, body, (sink, col4row, row4col))
  return col4row, row4col


def _add_row(cost: Array, state: _Solver, like: Array) -> _Solver:
  """Assigns row ``state.k`` by one shortest augmenting path; updates the duals."""
  n, q = cost.shape
  start = _Search(row=state.k, min_value=_full(like, (), 0, cost.dtype),
                  sink=_full(like, (), -1, jnp.int32), dist=_full(like, (q,), jnp.inf, cost.dtype),
                  path=_full(like, (q,), -1, jnp.int32), cols_seen=_full(like, (q,), False, bool))
  s = lax.while_loop(lambda s: s.sink < 0, lambda s: _search_step(cost, state, s), start)
  # The rows scanned besides k are those assigned to a reached column (each such
  # column's row is scanned next); row k is not assigned yet.
  col = jnp.maximum(state.col4row, 0)
  others = (state.col4row >= 0) & s.cols_seen[col]
  u = state.u + jnp.where(others, s.min_value - s.dist[col], 0)
  u = u + jnp.where(jnp.arange(n) == state.k, s.min_value, 0)
  v = state.v - jnp.where(s.cols_seen, s.min_value - s.dist, 0)
  col4row, row4col = _augment(s.path, s.sink, state.col4row, state.row4col)
  return _Solver(state.k + 1, u, v, col4row, row4col)


def _solve(cost: Array, real: Array) -> Array:
  """Assigns the first ``sum(real)`` rows of ``cost [n, Q]``; returns ``col4row [n]``."""
  n, q = cost.shape
  like = jnp.where(real[0], cost[0, 0], cost[0, 0])   # varies as cost and real together
  start = _Solver(k=_full(like, (), 0, jnp.int32), u=_full(like, (n,), 0, cost.dtype),
                  v=_full(like, (q,), 0, cost.dtype), col4row=_full(like, (n,), -1, jnp.int32),
                  row4col=_full(like, (q,), -1, jnp.int32))
  num_real = jnp.sum(real, dtype=jnp.int32)
  state = lax.while_loop(lambda s: s.k < num_real, lambda s: _add_row(cost, s, like), start)
  return state.col4row


def _match_one(cost: Array, valid: Array) -> tuple[Array, Array]:
  """:func:`hungarian_matching` of one ``cost [Q, M]``."""
  q, m = cost.shape
  order = jnp.argsort(~valid, stable=True).astype(jnp.int32)
  real = valid[order]
  col4row = _solve(_sanitize(cost, valid).T[order], real)
  query_index = jnp.zeros((m,), jnp.int32).at[order].set(jnp.where(real, col4row, 0))
  target_index = jnp.full((q + 1,), -1, jnp.int32)
  target_index = target_index.at[jnp.where(real, col4row, q)].set(order)
  return query_index.astype(jnp.int32), target_index[:q]


def _check(cost: Array, valid: ArrayLike | None) -> Array:
  if cost.ndim < 2:
    raise ValueError(f"`cost` must be [..., Q, M] (queries by targets), got shape {cost.shape}.")
  q, m = cost.shape[-2:]
  if q < m:
    raise ValueError(
        f"`cost` has fewer queries than targets (Q={q} < M={m}); every target needs a query: "
        "pad the queries or transpose the cost to [..., Q, M] with Q >= M.")
  if valid is None:
    return jnp.ones(cost.shape[:-2] + (m,), bool)
  valid = jnp.asarray(valid)
  if valid.dtype != jnp.bool_:
    raise TypeError(f"`valid` must be a boolean mask of real targets, got dtype {valid.dtype}; "
                    "pass e.g. `valid=gt_mask`.")
  try:
    return jnp.broadcast_to(valid, cost.shape[:-2] + (m,))
  except ValueError:
    raise ValueError(f"`valid` of shape {valid.shape} does not broadcast to the targets "
                     f"{cost.shape[:-2] + (m,)} of `cost` {cost.shape}.") from None


def _host_assign(cost, valid):
  """scipy's ``linear_sum_assignment`` of each ``[Q, M]`` of ``cost [..., Q, M]`` on its real
  columns (on the host)."""
  from scipy.optimize import linear_sum_assignment

  cost, valid = np.asarray(cost), np.asarray(valid)
  q, m = cost.shape[-2:]
  query_index = np.zeros(valid.shape, np.int32).reshape(-1, m)
  target_index = np.full(cost.shape[:-1], -1, np.int32).reshape(-1, q)
  for c, v, qi, ti in zip(cost.reshape(-1, q, m), valid.reshape(-1, m), query_index,
                          target_index, strict=True):
    cols = np.flatnonzero(v)
    rows, picked = linear_sum_assignment(c[:, cols])
    qi[cols[picked]] = rows
    ti[rows] = cols[picked]
  return query_index.reshape(valid.shape), target_index.reshape(cost.shape[:-1])


def _match_host(cost: Array, valid: Array) -> tuple[Array, Array]:
  """:func:`hungarian_matching` by scipy through ``jax.pure_callback``."""
  try:
    import scipy.optimize  # noqa: F401
  except ImportError:
    raise ImportError("hungarian_matching(method='host') needs scipy: `pip install "
                      "jaxloss[scipy]`, or use method='jit' (no dependency).") from None
  batch = cost.shape[:-2]
  clean = jax.vmap(_sanitize)(cost.reshape((-1,) + cost.shape[-2:]),
                              valid.reshape((-1, cost.shape[-1]))).reshape(cost.shape)
  shapes = (jax.ShapeDtypeStruct(batch + cost.shape[-1:], jnp.int32),
            jax.ShapeDtypeStruct(batch + cost.shape[-2:-1], jnp.int32))
  return jax.pure_callback(_host_assign, shapes, clean, valid, vmap_method="broadcast_all")


def hungarian_matching(cost: ArrayLike, *, valid: ArrayLike | None = None,
                       method: str = "jit") -> Matching:
  r"""Exact minimum-cost matching of the real targets to distinct queries.

  Finds the assignment :math:`\sigma` of each real target :math:`j` to a
  distinct query that minimises

  .. math::
     \sum_{j\,:\,\mathrm{valid}_j} C_{\sigma(j), j},

  the same total as ``scipy.optimize.linear_sum_assignment`` on the real
  columns (the matching itself may differ where optima tie). It is the
  bipartite matching of DETR (Carion et al. 2020,
  https://arxiv.org/abs/2005.12872) and its family, computed inside ``jit``
  by the shortest augmenting path algorithm (see the module docstring): no
  host round trip, run time growing with the number of real targets, not
  with ``M``, and one compilation for any number of them.

  No gradient flows through the matching (the cost is under
  ``stop_gradient``). Non-finite costs of real pairs (NaN, inf) count as the
  largest finite real cost, as scenic's matchers; padded targets may hold
  anything and never change the result. Costs are solved in float32 (float64
  for float64 input): a cost whose magnitude hides the others' differences
  at that precision makes them ties.

  Args:
    cost: ``[..., Q, M]`` cost of matching query ``q`` to target ``m``, with
      ``Q >= M``; leading axes are a batch.
    valid: ``[..., M]`` bool, the real targets (default: all).
    method: ``"jit"`` (the solver above, inside the compiled program) or ``"host"``:
      ``scipy.optimize.linear_sum_assignment`` on the real columns of each cost,
      called through ``jax.pure_callback`` (a host round trip per call; scipy is the
      optional extra ``jaxloss[scipy]``), for users who prefer it on CPU. Same fields,
      padding and non-finite cost semantics; where optima tie the two may pick
      different (equally cheap) matchings.

  Returns:
    A :class:`Matching` of ``query_index [..., M]``, ``target_index [..., Q]``
    and ``valid [..., M]``.

  Raises:
    ValueError: ``Q < M``, ``cost`` of rank < 2, ``valid`` of another shape, or an
      unknown ``method``.
    ImportError: ``method="host"`` without scipy.
    TypeError: ``valid`` is not boolean.
  """
  check_choice("method", method, METHODS, " ('jit': the solver inside the program; 'host': "
               "scipy through a callback)")
  cost = as_float(lax.stop_gradient(jnp.asarray(cost)))
  valid = _check(cost, valid)
  batch = cost.shape[:-2]
  if cost.shape[-1] == 0:
    return Matching(jnp.zeros(valid.shape, jnp.int32), jnp.full(cost.shape[:-1], -1, jnp.int32),
                    valid)
  if method == "host":
    return Matching(*_match_host(cost, valid), valid)
  flat_cost = cost.reshape((-1,) + cost.shape[-2:])
  flat_valid = valid.reshape((-1, cost.shape[-1]))
  query_index, target_index = jax.vmap(_match_one)(flat_cost, flat_valid)
  return Matching(query_index.reshape(batch + query_index.shape[-1:]),
                  target_index.reshape(batch + target_index.shape[-1:]), valid)
