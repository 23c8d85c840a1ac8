"""Speed of ``hungarian_matching`` against optax's solver on DETR-sized padded costs.

Batch 8 of ``[Q=300, M=100]`` costs (uniform in [0, 1)) whose first 0, 30 or 100
targets are real; padded columns hold the constant 0. jaxloss solves the real
targets only (``valid``); ``optax.assignment.hungarian_algorithm`` (vmapped)
gets the same padded costs, as a padded pipeline would hand them over, and
its optimum restricted to the real columns is also optimal for them (padding
costs a constant), which the run checks. Times are medians of ``--steps``
samples, implementations interleaved; compile is the wall time of
``lower().compile()``. ``scipy`` per image on the host is added when it is
installed.

Run: ``python benchmarks/matching.py [--steps 10]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxloss
from benchmarks.fcos_benchmark import timed

B, Q, M = 8, 300, 100
PAD = 0.0


def padded_costs(rng, num_real: int):
  cost = rng.uniform(size=(B, Q, M)).astype(np.float32)
  valid = np.broadcast_to(np.arange(M) < num_real, (B, M))
  cost[:, :, num_real:] = PAD
  return jnp.asarray(cost), jnp.asarray(valid)


def jaxloss_match(cost, valid):
  return jaxloss.hungarian_matching(cost, valid=valid).query_index


def optax_match(cost, valid):
  del valid
  rows, cols = jax.vmap(optax.assignment.hungarian_algorithm)(cost)
  # rows/cols pair queries with targets; return the query of each target.
  return jax.vmap(lambda r, c: jnp.zeros(M, r.dtype).at[c].set(r))(rows, cols)


def real_cost(cost, query_index, num_real):
  cost = np.asarray(cost)
  qi = np.asarray(query_index)[:, :num_real]
  return float(np.take_along_axis(cost[:, :, :num_real], qi[:, None, :], 1).sum())


def compile_s(fn, args):
  t = time.perf_counter()
  c = jax.jit(fn).lower(*args).compile()
  return c, time.perf_counter() - t


def scipy_time(cost, num_real, steps):
  try:
    from scipy.optimize import linear_sum_assignment
  except ImportError:
    return None, None
  cost = np.asarray(cost)[:, :, :num_real]
  times, total = [], 0.0
  for _ in range(steps):
    t = time.perf_counter()
    total = sum(c[linear_sum_assignment(c)].sum() for c in cost)
    times.append(time.perf_counter() - t)
  return float(np.median(times)), float(total)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(f"hungarian_matching, B={B} Q={Q} M={M} (pad cost {PAD}), {jax.devices()[0]}")
  ours, c_ours = compile_s(jaxloss_match, padded_costs(rng, 0))
  theirs, c_theirs = compile_s(optax_match, padded_costs(rng, 0))
  print(f"compile s: jaxloss {c_ours:.2f}, optax {c_theirs:.2f} (one program for every real count)")
  print(f"{'real':>4} {'jaxloss ms':>10} {'optax ms':>9} {'ratio':>6} {'scipy ms':>9} "
        f"{'same total':>10}")
  for num_real in (0, 30, 100):
    inputs = padded_costs(rng, num_real)
    t_ours, t_theirs = timed([(ours, inputs), (theirs, inputs)], args.steps)
    a = real_cost(inputs[0], ours(*inputs), num_real)
    b = real_cost(inputs[0], theirs(*inputs), num_real)
    t_scipy, s_total = scipy_time(inputs[0], num_real, args.steps)
    same = abs(a - b) <= 1e-4 * max(1.0, abs(b)) and (s_total is None or abs(a - s_total) <= 1e-3)
    scipy_ms = "n/a" if t_scipy is None else f"{t_scipy * 1e3:.2f}"
    print(f"{num_real:>4} {t_ours * 1e3:>10.2f} {t_theirs * 1e3:>9.2f} "
          f"{t_ours / t_theirs:>5.2f}x {scipy_ms:>9} {str(same):>10}")


if __name__ == "__main__":
  main()
