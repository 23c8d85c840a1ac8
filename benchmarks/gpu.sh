#!/usr/bin/env bash
# Every benchmark on the GPU: the device's name, then every family (FCOS
# included) with --repeats 20 and the detection benchmarks; tables and the
# compiled HLO go to OUTDIR.
#
#   benchmarks/gpu.sh OUTDIR [extra run.py flags]
#
# When the python3 on the PATH already has a CUDA jax (a GPU image with no
# package registry), it is used as it is; otherwise a fresh venv gets
# jax[cuda12], flax and optax from the registry.
set -uo pipefail
out="${1:?usage: benchmarks/gpu.sh OUTDIR [run.py flags]}"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

has_gpu_jax() {
  python3 -c 'import sys, jax
sys.exit(0 if any(d.platform == "gpu" for d in jax.devices()) else 1)' 2>/dev/null
}
if has_gpu_jax; then
  echo "using the installed CUDA jax: $(command -v python3)"
else
  venv="$(mktemp -d)/venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  python3 -m pip install -q --upgrade pip "jax[cuda12]" flax optax || {
    echo "could not install jax[cuda12]; see the pip output above" >&2; exit 1; }
  has_gpu_jax || { echo "jax sees no GPU after installing jax[cuda12]" >&2; exit 1; }
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv,noheader 2>/dev/null || true
  python3 -c 'import jax, jaxlib, flax, optax; print("devices:", jax.devices())
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__,
      "optax", optax.__version__)'
} 2>&1 | tee "$out/device.txt"

python3 "$root/benchmarks/run.py" --device gpu --repeats 20 --hlo-dir "$out/hlo" "$@" \
  2>&1 | tee "$out/benchmarks.txt"
status=${PIPESTATUS[0]}
# The detection benchmarks (assigners, matching, whole detector losses) that
# exist in this checkout, each with its own defaults.
(
  rc=0
  for script in "$root"/benchmarks/*_benchmark.py "$root"/benchmarks/matching.py; do
    case "$(basename "$script")" in fcos_benchmark.py) continue ;; esac
    [ -f "$script" ] || continue
    echo "## $(basename "$script")"
    python3 "$script" || rc=1
  done
  exit "$rc"
) 2>&1 | tee "$out/detection.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
tar -czf "$out/hlo.tar.gz" -C "$out" hlo && rm -rf "$out/hlo"
exit "$status"
