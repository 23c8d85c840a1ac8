"""The package itself: lazy Flax, the public names."""

import subprocess
import sys


def _run(code: str) -> str:
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=True).stdout.strip()


def test_import_does_not_load_flax():
  assert _run("import sys, jaxloss; print('flax' in sys.modules)") == "False"


def test_wrapper_families_load_on_first_use():
  out = _run("import sys, jaxloss; m = jaxloss.nnx.FocalLoss; "
             "print('flax' in sys.modules, jaxloss.linen.GIoULoss.__name__, "
             "'nnx' in dir(jaxloss))")
  assert out == "True GIoULoss True"
