"""FCOS: boxes that are not usable ground truth act as padding, label dtypes, argument
ranges, and no NaN intermediate under ``jax_debug_nans``.

The reference for "acts as padding" is the same call with that box's ``gt_mask`` False,
whose numbers tests/test_fcos.py checks against mmdetection 3.3.
"""

import jax
import numpy as np
import pytest

import jaxloss as fcos
from tests.detection.test_fcos import STRIDES, fixture_heads, jit_targets, mmdet_loss
from tests.utils import assert_finite, load_fixture, run_isolated

TARGET_KW = dict(num_classes=3, center_sampling=True, norm_on_bbox=True)


def _fixture():
  f = load_fixture("mmdet_fcos.npz")
  pts = fcos.fcos_points([tuple(s) for s in f["level_sizes"]], STRIDES)
  return f, pts, f["gt_boxes"].copy(), f["gt_labels"].copy(), f["gt_mask"].copy()


def _same_as_masked(f, pts, boxes, labels, mask, slots):
  """Targets, loss and gradients equal those with ``slots`` masked out; returns the loss."""
  masked = mask.copy()
  for b, m in slots:
    masked[b, m] = False
  jax.tree.map(np.testing.assert_array_equal,
               jit_targets(pts, boxes, labels, mask, **TARGET_KW),
               jit_targets(pts, boxes, labels, masked, **TARGET_KW))
  got = mmdet_loss(f, "giou_cs", boxes, labels, mask)
  jax.tree.map(np.testing.assert_array_equal, got, mmdet_loss(f, "giou_cs", boxes, labels, masked))
  return got


@pytest.mark.parametrize("bad_label", [3, -1, 1000])
def test_real_box_whose_label_is_not_a_class_is_padding(bad_label):
  # before: its points were positives for regression, centerness and num_pos but
  # background for classification, and fcos_targets emitted label -1
  f, pts, boxes, labels, mask = _fixture()
  labels[0, 1] = bad_label
  out, _ = _same_as_masked(f, pts, boxes, labels, mask, [(0, 1)])
  lab, _, _ = jit_targets(pts, boxes, labels, mask, **TARGET_KW)
  assert set(np.unique(lab)) <= {0, 1, 2, 3}
  assert_finite(out)


@pytest.mark.parametrize("coordinate", [np.inf, np.nan, 3e38, 1e30])
def test_real_box_with_non_finite_coordinates_or_area_is_padding(coordinate):
  # a box spanning +-1e30 or +-3e38 on both axes has finite sides but an area that
  # overflows float32: the GIoU of its points was NaN (a NaN box was skipped)
  f, pts, boxes, labels, mask = _fixture()
  boxes[1, 0] = [-coordinate, -coordinate, coordinate, coordinate]
  boxes[0, 2, 0] = -coordinate
  out, grads = _same_as_masked(f, pts, boxes, labels, mask, [(1, 0), (0, 2)])
  assert_finite((out, grads))


@pytest.mark.parametrize("coordinate", [1e17, 5e18])
def test_large_real_box_with_a_finite_area_still_counts(coordinate):
  f, pts, boxes, labels, mask = _fixture()
  boxes[1, 0] = [-coordinate, -coordinate, coordinate, coordinate]
  lab, _, _ = jit_targets(pts, boxes, labels, mask, **TARGET_KW)
  assert labels[1, 0] in np.asarray(lab[1])
  assert_finite(mmdet_loss(f, "giou_cs", boxes, labels, mask))


def test_label_dtypes_mean_the_same_classes():
  f, pts, boxes, labels, mask = _fixture()
  ref = mmdet_loss(f, "giou_cs", boxes, labels.astype(np.int32), mask)
  for dt in (np.uint8, np.int8, np.int16):
    jax.tree.map(np.testing.assert_array_equal, mmdet_loss(f, "giou_cs", boxes,
                                                           labels.astype(dt), mask), ref)
  # 300 classes: label 250 (int16) or 100 (int8) is that class, -1 a padding box; in
  # uint8, 250 is class 250
  kw = dict(TARGET_KW, num_classes=300)
  for dt, first in ((np.int16, 250), (np.int8, 100), (np.uint8, 250)):
    labels = np.array([[first, 7, 0, 0], [-1 if dt != np.uint8 else 0, 0, 0, 0]])
    expected = jit_targets(pts, boxes, labels.astype(np.int32), mask, **kw)
    assert first in np.asarray(expected[0])
    jax.tree.map(np.testing.assert_array_equal,
                 jit_targets(pts, boxes, labels.astype(dt), mask, **kw), expected)
  with pytest.raises(TypeError, match="`gt_labels` must hold integer class labels"):
    fcos.fcos_targets(pts, boxes, labels.astype(np.float32), mask, **kw)


def test_centerness_targets_needs_four_distances():
  with pytest.raises(ValueError, match=r"`ltrb` must be \[..., 4\]"):
    fcos.centerness_targets(np.ones((5, 3), np.float32))
  with pytest.raises(ValueError, match=r"`ltrb` must be \[..., 4\]"):
    fcos.centerness_targets(np.float32(1.0))


def test_radius_and_strides_out_of_range_raise():
  f, pts, boxes, labels, mask = _fixture()
  heads = fixture_heads(f)
  gt = (boxes, labels, mask)
  radius = r"`center_sample_radius` must be in \[0, inf\), got -1"
  stride = r"`strides` must be in \(0, inf\), got 0"
  with pytest.raises(ValueError, match=radius):
    fcos.fcos_targets(pts, *gt, num_classes=3, center_sample_radius=-1.0)
  with pytest.raises(ValueError, match=radius):
    fcos.fcos_loss(*heads, *gt, num_classes=3, center_sample_radius=-1.0)
  zero = (8, 16, 0, 64, 128)
  with pytest.raises(ValueError, match=stride):
    fcos.fcos_targets(pts, *gt, num_classes=3, strides=zero)
  with pytest.raises(ValueError, match=stride):
    fcos.fcos_loss(*heads, *gt, num_classes=3, strides=zero)
  with pytest.raises(ValueError, match=stride):
    fcos.fcos_points([(2, 2)], (0,))


def check_no_nan_formed():
  """Runs under ``jax_debug_nans``: eager fcos_targets (the old sort key of a padded slot
  was NaN) and the jitted loss's value and gradient. The padding is finite: a NaN input
  raises under the flag as soon as it becomes a jax array."""
  f, pts, boxes, labels, mask = _fixture()
  boxes[~mask] = 1e30
  clean = np.where(mask[..., None], boxes, 0)
  expected = jit_targets(pts, clean, labels, mask, **TARGET_KW)
  got = fcos.fcos_targets(pts, boxes, labels, mask, **TARGET_KW)
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  jax.tree.map(np.testing.assert_array_equal, mmdet_loss(f, "giou_cs", boxes, labels, mask),
               mmdet_loss(f, "giou_cs", clean, labels, mask))


def test_no_nan_intermediate_under_debug_nans():
  # a fresh process: executables compiled earlier in this one may skip the check
  run_isolated("import jax; jax.config.update('jax_debug_nans', True); "
               "from tests.detection import test_fcos_correctness as t; t.check_no_nan_formed()")


def test_float64_heads_keep_float64_outputs():
  # #13 item 11: num_pos was float32 whatever the inputs' precision.
  try:
    from jax import enable_x64
  except ImportError:  # jax < 0.8
    from jax.experimental import enable_x64
  f, _, boxes, labels, mask = _fixture()
  single = fcos.fcos_loss(*fixture_heads(f), boxes, labels, mask, num_classes=3)
  with enable_x64(True):
    heads = jax.tree.map(lambda x: np.asarray(x, np.float64), fixture_heads(f))
    double = fcos.fcos_loss(*heads, boxes, labels, mask, num_classes=3)
    assert {k: v.dtype for k, v in double.items()} == {k: np.dtype(np.float64) for k in double}
  assert float(double["num_pos"]) == float(single["num_pos"]) > 1
  np.testing.assert_allclose(double["loss"], single["loss"], rtol=1e-5)
