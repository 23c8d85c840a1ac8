"""User errors of the box functions: jaxloss's own ``ValueError`` naming the argument, the
shapes and the fix, where JAX's own broadcasting or indexing messages came before
(issue #14 item 8)."""

import numpy as np
import pytest

import jaxloss

BOXES3 = np.tile(np.array([0.0, 0.0, 2.0, 2.0], np.float32), (3, 1))
BOXES5 = np.tile(np.array([1.0, 1.0, 3.0, 3.0], np.float32), (5, 1))


@pytest.mark.parametrize("fn", [jaxloss.box_iou, jaxloss.generalized_box_iou])
def test_aligned_iou_of_different_numbers_of_boxes_points_to_pairwise(fn):
  with pytest.raises(ValueError, match=r"`a` \(3, 4\), `b` \(5, 4\).*jaxloss\.pairwise_box_iou"):
    fn(BOXES3, BOXES5)
  assert jaxloss.pairwise_box_iou(BOXES3, BOXES5).shape == (3, 5)  # the fix it names


@pytest.mark.parametrize("fn", [jaxloss.pairwise_box_iou, jaxloss.pairwise_generalized_box_iou])
def test_pairwise_iou_of_a_single_box(fn):
  with pytest.raises(ValueError, match=r"`a` must be a set of boxes \[\.\.\., N, 4\], got shape "
                                       r"\(4,\); pass a single box as `a\[None\]`"):
    fn(BOXES3[0], BOXES5)
  with pytest.raises(ValueError, match=r"`b` must be a set of boxes .*\(4,\)"):
    fn(BOXES3, BOXES5[0])
  assert fn(BOXES3[0][None], BOXES5).shape == (1, 5)
  with pytest.raises(ValueError, match=r"`a` \(2, 3, 4\), `b` \(4, 5, 4\).*batch axes"):
    fn(np.stack([BOXES3] * 2), np.stack([BOXES5] * 4))


@pytest.mark.parametrize("fn", [jaxloss.distance_to_box, jaxloss.box_to_distance])
def test_points_must_be_xy(fn):
  boxes = np.ones((5, 4), np.float32)
  for points in (np.zeros((5, 3), np.float32), np.zeros((), np.float32)):
    with pytest.raises(ValueError, match=r"`points` must have a last axis of size 2 \(\(x, y\) "
                                         r"coordinates\), got shape \((5, 3)?\).*fcos_points"):
      fn(points, boxes)
  with pytest.raises(ValueError, match=r"`points` \(6, 2\), `(ltrb|boxes)` \(5, 4\).*one point "
                                       r"per box"):
    fn(np.zeros((6, 2), np.float32), boxes)
  assert fn(np.zeros((5, 2), np.float32), boxes).shape == (5, 4)


def test_iou_loss_mode_is_checked_by_check_choice():
  with pytest.raises(ValueError, match=r"iou_loss mode must be one of \('linear', 'square', "
                                       r"'log'\), got 'logg'"):
    jaxloss.iou_loss(BOXES3, BOXES3, mode="logg")
