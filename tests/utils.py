"""Test helpers shared by every test module."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict[str, np.ndarray]:
  """The arrays of ``fixtures/<peer>/<name>`` (``<peer>``: the name's first word)."""
  with np.load(FIXTURES / name.split("_")[0] / name) as data:
    return dict(data)


def assert_finite(tree) -> None:
  """Every leaf of ``tree`` is finite."""
  for leaf in jax.tree.leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf))), leaf


def value_and_grad_finite(fn, *args, argnums=0):
  """Checks value and gradient of a scalar ``fn`` are finite; returns them."""
  value, grads = jax.value_and_grad(fn, argnums=argnums)(*args)
  assert_finite((value, grads))
  return value, grads


class TraceCounter:
  """Wraps a function and counts how often jit traces it."""

  def __init__(self, fn):
    self.count = 0
    self._fn = fn
    functools.update_wrapper(self, fn)

  def __call__(self, *args, **kwargs):
    self.count += 1
    return self._fn(*args, **kwargs)


def jit_counting(fn, **jit_kwargs):
  counter = TraceCounter(fn)
  return jax.jit(counter, **jit_kwargs), counter


def bf16(x):
  return jnp.asarray(x, jnp.bfloat16)


def run_isolated(code: str, timeout: float = 600) -> None:
  """Runs Python ``code`` in a fresh process (this repository first on the path, CPU) and
  fails with its output unless it exits 0."""
  import os
  import subprocess
  import sys

  root = str(pathlib.Path(__file__).parent.parent)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                       text=True, timeout=timeout)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
