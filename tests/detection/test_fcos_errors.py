"""User errors of the FCOS loss and targets: jaxloss's own ``ValueError`` naming the argument,
the shapes and the fix, raised before anything is traced (issue #14 item 8)."""

import numpy as np
import pytest

import jaxloss
from jaxloss.detection.assigners.fcos import check_regress_ranges

STRIDES = (8, 16)
RANGES = ((-1, 64), (64, 1e8))
SHAPES = ((2, 8, 8), (2, 4, 4))


def _heads(num_classes=3):
  return ([np.zeros((*s, num_classes), np.float32) for s in SHAPES],
          [np.zeros((*s, 4), np.float32) for s in SHAPES],
          [np.zeros((*s, 1), np.float32) for s in SHAPES])


def _ground_truth(batch):
  return (np.zeros((batch, 2, 4), np.float32), np.zeros((batch, 2), np.int32),
          np.zeros((batch, 2), bool))


def test_ground_truth_of_another_batch():
  with pytest.raises(ValueError, match=r"`gt_boxes` of shape \(3, 2, 4\) has batch 3 but the "
                                       r"heads' maps have batch 2 \(cls_logits\[0\] "
                                       r"\(2, 8, 8, 3\)\); pass the ground truth of the same"):
    jaxloss.fcos_loss(*_heads(), *_ground_truth(3), num_classes=3, strides=STRIDES,
                      regress_ranges=RANGES)
  boxes, labels, mask = _ground_truth(2)
  with pytest.raises(ValueError, match=r"`gt_mask` of shape \(1, 2\) has batch 1"):
    jaxloss.fcos_loss(*_heads(), boxes, labels, mask[:1], num_classes=3, strides=STRIDES,
                      regress_ranges=RANGES)


@pytest.mark.parametrize("entry", [64, (1, 2, 3), "0-64", (0, "64")])
def test_regress_range_that_is_not_a_pair(entry):
  ranges = ((-1, 64), entry)
  match = r"regress_ranges\[1\] must be a pair \(lo, hi\) of numbers.*e\.g\. regress_ranges="
  with pytest.raises(ValueError, match=match):
    jaxloss.fcos_loss(*_heads(), *_ground_truth(2), num_classes=3, strides=STRIDES,
                      regress_ranges=ranges)
  points = jaxloss.fcos_points([s[1:] for s in SHAPES], STRIDES)
  with pytest.raises(ValueError, match=match):
    jaxloss.fcos_targets(points, *_ground_truth(2), num_classes=3, strides=STRIDES,
                         regress_ranges=ranges)


def test_regress_ranges_per_level_and_box_loss_choice():
  with pytest.raises(ValueError, match="got 1 regress ranges for 2 strides"):
    jaxloss.fcos_loss(*_heads(), *_ground_truth(2), num_classes=3, strides=STRIDES,
                      regress_ranges=RANGES[:1])
  with pytest.raises(ValueError, match=r"box_loss must be one of \('giou', 'iou'\), got 'l1'"):
    jaxloss.fcos_loss(*_heads(), *_ground_truth(2), num_classes=3, strides=STRIDES,
                      regress_ranges=RANGES, box_loss="l1")
  # numpy numbers and arrays are pairs too
  check_regress_ranges((np.array([-1.0, 64.0]), (np.float32(64), np.inf)), 2)
