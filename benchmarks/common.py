"""Measurement and table printing shared by the benchmark families.

A *case* is one loss at one shape: several implementations (jaxloss, its
plain-autodiff path, optax, a plain ``jnp`` transcription) of the same scalar
loss over the same inputs, plus the memory-bound floor ``x * 2`` over the
largest input. Each implementation is measured as
``jax.jit(jax.value_and_grad(loss))``:

* time: median over ``repeats`` samples after two warm-up calls; a sample is
  ``calls`` back-to-back calls synchronised once with ``block_until_ready``,
  divided by ``calls`` (on a GPU, 10 calls hide the host's dispatch latency,
  which is as long as a 1 GB kernel); implementations are interleaved
  sample by sample, so load from other processes hits them alike;
* compile: wall time of ``lower(...).compile()`` (tracing included);
* memory: peak device memory of the executable from
  ``compiled.memory_analysis()``: arguments + outputs + temporaries
  (an argument that a peer needs and jaxloss does not, e.g. a one-hot
  target, counts against the peer);
* bandwidth: the least traffic a ``value_and_grad`` must move (every input
  read once, the gradient of the first argument written once; for the floor,
  ``x`` read and ``2 * x`` written) over its time, and that as a share of the
  device's datasheet HBM bandwidth where it is known (``PEAK_GBS``).

Ratios are against the row named ``reference`` measured in the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

FLOOR = "floor x*2 (fwd)"


@dataclasses.dataclass
class Impl:
  name: str
  loss: Callable[..., jax.Array]
  args: tuple
  # Traced under jaxloss.fused_kernels(fused) when not None.
  fused: bool | None = None


@dataclasses.dataclass
class Case:
  family: str
  name: str
  shape: str
  impls: list[Impl]
  reference: str
  floor_input: jax.Array
  note: str = ""


# Datasheet HBM bandwidth (GB/s) by ``device_kind`` prefix.
PEAK_GBS = {"NVIDIA H200": 4800.0, "NVIDIA H100": 3350.0, "NVIDIA A100": 2039.0,
            "NVIDIA L4": 300.0, "TPU v4": 1200.0, "TPU v5 lite": 819.0, "TPU v5": 2765.0}


def peak_gbs(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((v for k, v in PEAK_GBS.items() if kind.startswith(k)), None)


@dataclasses.dataclass
class Result:
  name: str
  time_s: float
  compile_s: float
  peak_bytes: int
  moved_bytes: int = 0


def _traced(impl: Impl, fn):
  if impl.fused is None:
    return fn()
  import jaxloss
  with jaxloss.fused_kernels(impl.fused):
    return fn()


def _peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  if m is None:
    return -1
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _compile(impl: Impl, device):
  args = jax.device_put(impl.args, device)
  fn = jax.jit(jax.value_and_grad(impl.loss))
  start = time.perf_counter()
  compiled = _traced(impl, lambda: fn.lower(*args).compile())
  return compiled, args, time.perf_counter() - start, nbytes(*args) + nbytes(args[0])


def _compile_floor(x, device):
  x = jax.device_put(x, device)
  start = time.perf_counter()
  compiled = jax.jit(lambda x: x * 2).lower(x).compile()
  return compiled, (x,), time.perf_counter() - start, 2 * nbytes(x)


def _dump_hlo(case: Case, entries, hlo_dir: str) -> None:
  import pathlib
  import re
  folder = pathlib.Path(hlo_dir)
  folder.mkdir(parents=True, exist_ok=True)
  for name, compiled, *_ in entries:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", f"{case.name}_{name}").strip("_")
    (folder / f"{stem}.hlo.txt").write_text(compiled.as_text())


def measure(case: Case, device, repeats: int, hlo_dir: str | None = None,
            calls: int = 1) -> list[Result]:
  """Compiles and times every implementation of ``case`` plus the floor;
  with ``hlo_dir``, also writes each compiled program's HLO there."""
  entries = [(impl.name, *_compile(impl, device)) for impl in case.impls]
  entries.append((FLOOR, *_compile_floor(case.floor_input, device)))
  if hlo_dir:
    _dump_hlo(case, entries, hlo_dir)
  for _, compiled, args, *_ in entries:
    for _ in range(2):
      jax.block_until_ready(compiled(*args))
  times = {name: [] for name, *_ in entries}
  for _ in range(repeats):
    for name, compiled, args, *_ in entries:
      start = time.perf_counter()
      for _ in range(calls - 1):
        compiled(*args)
      jax.block_until_ready(compiled(*args))
      times[name].append((time.perf_counter() - start) / calls)
  return [Result(name, statistics.median(times[name]), compile_s, _peak_bytes(compiled), moved)
          for name, compiled, _, compile_s, moved in entries]


def _ratio(a: float, b: float) -> str:
  return f"{a / b:.2f}x" if b > 0 else "n/a"


def format_table(case: Case, results: Sequence[Result], peak: float | None = None) -> str:
  by_name = {r.name: r for r in results}
  ref = by_name[case.reference]
  floor = by_name[FLOOR]
  head = (f"{'implementation':<34} {'fwd+bwd ms':>10} {'vs ref':>14} "
          f"{'vs floor':>9} {'compile s':>9} {'vs ref':>7} {'peak MiB':>9} {'vs ref':>7} "
          f"{'GB/s':>7} {'%peak':>6}")
  lines = [f"## {case.family}: {case.name} {case.shape}, ref = {case.reference}"
           + (f"  ({case.note})" if case.note else ""), head, "-" * len(head)]
  for r in results:
    lines.append(
        f"{r.name:<34} {r.time_s * 1e3:>10.2f} {_ratio(r.time_s, ref.time_s):>14} "
        f"{_ratio(r.time_s, floor.time_s):>9} {r.compile_s:>9.2f} "
        f"{_ratio(r.compile_s, ref.compile_s):>7} {r.peak_bytes / 2**20:>9.1f} "
        f"{_ratio(r.peak_bytes, ref.peak_bytes):>7} {_gbs(r):>7.0f} {_share(r, peak):>6}")
  return "\n".join(lines)


def _gbs(r: Result) -> float:
  return r.moved_bytes / r.time_s / 1e9 if r.time_s > 0 else float("nan")


def _share(r: Result, peak: float | None) -> str:
  return f"{100 * _gbs(r) / peak:.0f}%" if peak else "n/a"


def nbytes(*arrays) -> int:
  return sum(int(jnp.asarray(a).size) * jnp.asarray(a).dtype.itemsize for a in arrays)
