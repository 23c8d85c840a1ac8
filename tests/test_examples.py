"""Smoke tests: every example's ``--quick`` mode runs to the end in a fresh process.

Marked ``examples`` (deselect with ``-m "not examples"``); examples whose
optional dependencies (``pip install -e ".[examples]"``) are missing are skipped.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
ROOT = EXAMPLES.parent

pytestmark = pytest.mark.examples


def run_example(name: str, *args: str, timeout: float = 240) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)  # conftest's 8 forced devices would split the CPU thread pool
  proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, env=env)
  assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


def needs(*modules: str):
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  return pytest.mark.skipif(bool(missing), reason=f"example dependencies missing: {missing}")


def test_quickstart():
  assert "registered losses" in run_example("quickstart.py")


def test_optax_pipeline():
  out = run_example("optax_pipeline.py", "--quick")
  assert "held-out box IoU" in out


def test_multi_device():
  out = run_example("multi_device.py", "--quick", "--devices", "4")
  assert "4 devices" in out
  assert out.count("-> equal") == 2


@needs("matplotlib", "tqdm")
def test_imbalanced_segmentation(tmp_path):
  out = run_example("imbalanced_segmentation.py", "--quick", "--no-progress",
                    "--out", str(tmp_path))
  assert "Loss Configuration" in out and "mIoU" in out
  results = json.loads((tmp_path / "imbalanced_segmentation.json").read_text())["results"]
  assert results and all(0.0 <= r["mean_iou"] <= 1.0 for r in results.values())
  assert (tmp_path / "imbalanced_segmentation.png").stat().st_size > 0


@needs("tqdm", "pycocotools")
def test_fcos_shapes():
  out = run_example("fcos_shapes.py", "--quick", "--no-progress")
  assert "COCO bbox mAP" in out


@needs("tqdm", "pycocotools")
def test_detr_shapes():
  out = run_example("detr_shapes.py", "--quick", "--no-progress")
  assert "COCO bbox mAP" in out and "no NMS" in out


@needs("tqdm", "pycocotools")
@pytest.mark.parametrize("head", ["yolov8", "yolox"])
def test_yolo_shapes(head, tmp_path):
  out = run_example("yolo_shapes.py", "--quick", "--no-progress", "--head", head,
                    "--json", str(tmp_path / "yolo.json"))
  assert f"{head}: held-out COCO bbox mAP" in out
  results = json.loads((tmp_path / "yolo.json").read_text())
  assert list(results) == [head] and 0.0 <= results[head]["map"] <= 1.0
