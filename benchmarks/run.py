"""Benchmarks jaxloss against optax, plain jnp and the memory-bound floor.

Usage (from the repository root)::

  python benchmarks/run.py                      # CPU (or GPU when present), all families
  python benchmarks/run.py --device gpu         # on the GPU, + focal HBM bandwidth
  python benchmarks/run.py --families classification,boxes --repeats 20
  python benchmarks/run.py --quick              # tiny shapes: a CI smoke run
  benchmarks/gpu.sh OUTDIR                      # every family on the GPU, tables to OUTDIR

Every number is ``jax.jit(jax.value_and_grad(loss))``: median time of
``--repeats`` calls after warm-up, compile time and peak memory from
``compiled.memory_analysis()``, each also as a ratio against the peer measured
in the same run (see ``benchmarks/common.py``), and the achieved bandwidth (least
bytes read + written over the time) against the device's datasheet HBM peak.
On a GPU the batch is ``--scale`` times larger (default 8) so that every input
is several times the L2 cache. Timings on a shared machine are noisy; compare
the ratios, and rerun.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import optax  # noqa: E402

from benchmarks import boxes, classification, regression, segmentation  # noqa: E402
from benchmarks.common import Case, format_table, measure, nbytes, peak_gbs  # noqa: E402

FAMILIES = {
    "classification": classification.cases,
    "regression": regression.cases,
    "segmentation": segmentation.cases,
    "boxes": boxes.cases,
}
ALL = (*FAMILIES, "fcos")


def _device(kind: str):
  if kind == "auto":
    kind = "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
  try:
    return jax.devices(kind)[0]
  except RuntimeError as err:
    raise SystemExit(f"no {kind} device available ({err}); use --device cpu") from None


def _header(device, args) -> str:
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"# jaxloss benchmarks: jax {jax.__version__}, optax {optax.__version__}, "
          f"device {device.device_kind} ({device.platform}), {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, load {load:.1f}, repeats {args.repeats}, "
          f"scale {args.scale}, calls {args.calls}" + (", QUICK shapes" if args.quick else ""))


def _bandwidth(case: Case, results, peak: float | None) -> str:
  """Effective bandwidth of the focal loss's jaxloss fwd+bwd."""
  x, t = case.impls[0].args
  moved = nbytes(x, t) + nbytes(x)
  r = results[0]
  gbs = moved / r.time_s / 1e9
  share = f" = {100 * gbs / peak:.0f}% of the {peak:.0f} GB/s datasheet peak" if peak else ""
  return (f"focal fwd+bwd effective bandwidth ({r.name}): {gbs:.1f} GB/s{share} "
          f"= (logits + targets read once + gradient written once = {moved / 2**20:.0f} MiB)"
          f" / {r.time_s * 1e3:.2f} ms; a lower bound: the kernel reads its inputs twice "
          f"(forward, then backward), i.e. 5/3 of that traffic.")


def _fcos(args) -> str:
  script = ROOT / "benchmarks" / "fcos_benchmark.py"
  if args.quick:
    return "fcos: skipped in --quick mode; run python benchmarks/fcos_benchmark.py"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
  out = subprocess.run([sys.executable, str(script), "--steps", str(args.repeats)],
                       capture_output=True, text=True, check=False, cwd=ROOT, env=env)
  return out.stdout + (f"\nfcos_benchmark.py failed:\n{out.stderr[-2000:]}" if out.returncode
                       else "")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
  parser.add_argument("--families", default=",".join(ALL),
                      help=f"comma-separated subset of {','.join(ALL)}")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per implementation (default 15, --quick 3)")
  parser.add_argument("--quick", action="store_true", help="tiny shapes, for a CI smoke run")
  parser.add_argument("--scale", type=int, default=None,
                      help="batch multiplier of the family shapes (default 8 on a GPU, else 1)")
  parser.add_argument("--calls", type=int, default=None,
                      help="calls per timed sample (default 10 on a GPU, else 1)")
  parser.add_argument("--hlo-dir", default=None,
                      help="write each compiled program's HLO text into this folder")
  args = parser.parse_args(argv)
  if args.repeats is None:
    args.repeats = 3 if args.quick else 15
  families = [f for f in args.families.split(",") if f]
  unknown = sorted(set(families) - set(ALL))
  if unknown:
    parser.error(f"unknown families {unknown}; choose from {', '.join(ALL)}")
  device = _device(args.device)
  on_gpu = device.platform == "gpu"
  if args.scale is None:
    args.scale = 8 if on_gpu else 1
  if args.calls is None:
    args.calls = 10 if on_gpu else 1
  peak = peak_gbs(device)
  print(_header(device, args), flush=True)
  for family in families:
    if family == "fcos":
      print("\n" + _fcos(args), flush=True)
      continue
    for case in FAMILIES[family](args.quick, args.scale):
      if isinstance(case, str):
        print("\n" + case, flush=True)
        continue
      results = measure(case, device, args.repeats, args.hlo_dir, args.calls)
      print("\n" + format_table(case, results, peak), flush=True)
      if case.name.startswith("sigmoid_focal_loss"):
        print(_bandwidth(case, results, peak), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
