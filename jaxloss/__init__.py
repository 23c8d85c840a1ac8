"""jaxloss: detection and segmentation losses for JAX.

Every loss is a pure function that works under ``jax.jit``, ``jax.vmap``,
``jax.grad`` and sharding, with static shapes. See the docs' conventions page,
:mod:`jaxloss.nnx` / :mod:`jaxloss.linen` for Flax wrappers and
:func:`build_loss` for config-driven construction.

``import jaxloss`` does not import flax: the wrapper families
``jaxloss.nnx`` and ``jaxloss.linen`` load on first use.
"""

import importlib as _importlib

from jaxloss._src.kernels import fused_kernels, set_fused_kernels
from jaxloss._src.labels import check_labels
from jaxloss._src.reduce import reduce_loss
from jaxloss.boxes import (
    box_area,
    box_convert,
    box_iou,
    box_to_distance,
    ciou_loss,
    diou_loss,
    distance_to_box,
    eiou_loss,
    generalized_box_iou,
    giou_loss,
    iou_loss,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
    siou_loss,
)
from jaxloss.classification import (
    binary_cross_entropy,
    cross_entropy,
    distribution_focal_loss,
    gaussian_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
    varifocal_loss,
)
from jaxloss.configs.build import build_loss
from jaxloss.configs.registry import list_losses
from jaxloss.detection.anchors import anchor_grid
from jaxloss.detection.assigners.atss import ATSSAssignment, atss_assign
from jaxloss.detection.assigners.dynamic_soft_label import dynamic_soft_label_assign
from jaxloss.detection.assigners.fcos import centerness_targets, fcos_targets
from jaxloss.detection.assigners.max_iou import MaxIoUAssignment, max_iou_assign
from jaxloss.detection.assigners.simota import SimOTAAssignment, simota_assign
from jaxloss.detection.assigners.task_aligned import TaskAlignedAssignment, task_aligned_assign
from jaxloss.detection.coders import delta_xywh_decode, delta_xywh_encode
from jaxloss.detection.losses.detr import detr_loss
from jaxloss.detection.losses.fcos import centerness_loss, fcos_loss
from jaxloss.detection.losses.gfl import gfl_loss
from jaxloss.detection.losses.mask2former import (
    mask2former_loss,
    point_sample,
    uncertain_point_coords,
)
from jaxloss.detection.losses.retinanet import retinanet_loss
from jaxloss.detection.losses.yolo import yolov8_loss, yolox_loss
from jaxloss.detection.matching.costs import detr_matching_cost
from jaxloss.detection.matching.hungarian import Matching, hungarian_matching
from jaxloss.detection.points import fcos_points
from jaxloss.regression import balanced_l1_loss, l1_loss, mse_loss, smooth_l1_loss
from jaxloss.segmentation import (
    boundary_loss,
    class_weights,
    cldice_loss,
    combined_segmentation_loss,
    dice_cldice_loss,
    dice_loss,
    focal_dice_loss,
    generalized_dice_loss,
    hausdorff_dt_loss,
    hausdorff_er_loss,
    jaccard_loss,
    lovasz_hinge_loss,
    lovasz_softmax_loss,
    mask_loss,
    mcc_loss,
    ohem_cross_entropy,
    signed_distance_map,
    soft_skeleton,
    tversky_loss,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # reduction and registry
    "reduce_loss",
    "check_labels",
    "build_loss",
    "list_losses",
    # fused kernels: plain-autodiff switch (forward-mode autodiff)
    "fused_kernels",
    "set_fused_kernels",
    # regression
    "l1_loss",
    "mse_loss",
    "smooth_l1_loss",
    "balanced_l1_loss",
    # classification
    "binary_cross_entropy",
    "cross_entropy",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
    "distribution_focal_loss",
    "gaussian_focal_loss",
    # boxes
    "box_convert",
    "box_area",
    "box_iou",
    "pairwise_box_iou",
    "generalized_box_iou",
    "pairwise_generalized_box_iou",
    "distance_to_box",
    "box_to_distance",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "eiou_loss",
    "siou_loss",
    # segmentation
    "dice_loss",
    "jaccard_loss",
    "tversky_loss",
    "generalized_dice_loss",
    "lovasz_softmax_loss",
    "lovasz_hinge_loss",
    "mask_loss",
    "combined_segmentation_loss",
    "focal_dice_loss",
    "class_weights",
    # dense detection
    "fcos_points",
    "fcos_targets",
    "centerness_targets",
    "centerness_loss",
    "fcos_loss",
    # set prediction
    "Matching",
    "hungarian_matching",
    "detr_matching_cost",
    "detr_loss",
    "point_sample",
    "uncertain_point_coords",
    "mask2former_loss",
    # dense detection: anchor-free assigners and one-stage detector losses
    "TaskAlignedAssignment",
    "task_aligned_assign",
    "SimOTAAssignment",
    "simota_assign",
    "dynamic_soft_label_assign",
    "yolov8_loss",
    "yolox_loss",
    # anchor-based dense detection
    "anchor_grid",
    "delta_xywh_encode",
    "delta_xywh_decode",
    "MaxIoUAssignment",
    "max_iou_assign",
    "ATSSAssignment",
    "atss_assign",
    "retinanet_loss",
    "gfl_loss",
    # segmentation additions: topology
    "soft_skeleton",
    "cldice_loss",
    "dice_cldice_loss",
    # segmentation additions: distance-based
    "signed_distance_map",
    "boundary_loss",
    "hausdorff_dt_loss",
    "hausdorff_er_loss",
    # segmentation additions: hard-pixel mining
    "ohem_cross_entropy",
    "mcc_loss",
]


def __getattr__(name: str):
  # The Flax wrapper families load on first use (``jaxloss.nnx.FocalLoss``).
  if name in ("nnx", "linen"):
    return _importlib.import_module(f"jaxloss.{name}")
  raise AttributeError(f"module 'jaxloss' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted([*globals(), "nnx", "linen"])
