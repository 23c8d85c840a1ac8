"""The declaration table: one row per loss, from which everything else is made.

Each :class:`Declaration` names a loss (``"FocalLoss"``), the function that
computes it and how many positional inputs it takes. Its hyper-parameters are
the function's keyword-only parameters other than the common ones
(``weight``, ``where``, ``reduction``, ``avg_factor``, ``axis_name``). From
this table come :func:`build_loss`, :func:`list_losses`, and the Flax
wrappers in :mod:`jaxloss.nnx` and :mod:`jaxloss.linen`; adding a loss to
all of them is adding a row here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxloss import regression
from jaxloss._src.checks import check_reduction, class_weight_hint
from jaxloss.boxes import iou
from jaxloss.classification import entropy, focal, quality
from jaxloss.configs import adaptors, mmdet, monai, quick
from jaxloss.detection.losses import fcos, gfl, retinanet, yolo
from jaxloss.segmentation import (
    boundary,
    composite,
    lovasz,
    mcc,
    ohem,
    region,
    topology,
)

COMMON_KEYWORDS = ("weight", "where", "reduction", "avg_factor", "axis_name")
WRAPPER_KEYWORDS = ("loss_weight", "reduction")


@dataclasses.dataclass(frozen=True)
class Declaration:
  """One loss of the registry.

  Attributes:
    name: the registry and wrapper class name, e.g. ``"FocalLoss"``.
    fn: the loss function; hyper-parameters are its keyword-only parameters.
    num_inputs: how many positional arrays a call takes (``pred, target``: 2),
      or a tuple of the accepted counts (``CrossEntropyLoss``: 2, or 3 with
      ``use_mask=True``).
    aliases: further names that :func:`build_loss` accepts for this loss.
    flax: whether :mod:`jaxloss.nnx` and :mod:`jaxloss.linen` get a class of
      this name (``False`` for config shorthands such as ``"dice"``, which
      :func:`build_loss` still builds for every backend).
    more_inputs_with: a boolean hyper-parameter that selects the larger input count
      (``CrossEntropyLoss``: ``use_mask``), so that a call's further positional
      arguments can be read as ``weight, avg_factor, reduction_override``.
  """
  name: str
  fn: Callable[..., Any]
  num_inputs: int | tuple[int, ...] = 2
  aliases: tuple[str, ...] = ()
  flax: bool = True
  more_inputs_with: str | None = None

  def input_counts(self, hparams: Mapping[str, Any]) -> tuple[int, ...]:
    """The positional input counts a call accepts under ``hparams``."""
    if isinstance(self.num_inputs, int):
      return (self.num_inputs,)
    if self.more_inputs_with is not None:
      return (max(self.num_inputs) if hparams.get(self.more_inputs_with) else
              min(self.num_inputs),)
    return self.num_inputs

  @property
  def signature(self) -> inspect.Signature:
    return inspect.signature(self.fn)

  @property
  def hyperparameters(self) -> dict[str, Any]:
    """Keyword-only hyper-parameters of ``fn`` and their defaults."""
    return {
        p.name: p.default
        for p in self.signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in COMMON_KEYWORDS
    }

  @property
  def common(self) -> tuple[str, ...]:
    """Common keywords (``weight``, ``where``, ...) that ``fn`` accepts."""
    return tuple(k for k in COMMON_KEYWORDS if k in self.signature.parameters)

  @property
  def default_reduction(self) -> str | None:
    p = self.signature.parameters.get("reduction")
    return None if p is None else p.default


DECLARATIONS: tuple[Declaration, ...] = (
    # regression
    Declaration("L1Loss", regression.l1_loss),
    Declaration("MSELoss", regression.mse_loss),
    Declaration("SmoothL1Loss", regression.smooth_l1_loss),
    Declaration("BalancedL1Loss", regression.balanced_l1_loss),
    # classification
    Declaration("CrossEntropyLoss", mmdet.mmdet_cross_entropy, num_inputs=(2, 3),
                more_inputs_with="use_mask"),
    Declaration("BinaryCrossEntropyLoss", entropy.binary_cross_entropy),
    Declaration("FocalLoss", mmdet.mmdet_focal_loss),
    Declaration("SoftmaxFocalLoss", focal.softmax_focal_loss),
    Declaration("QualityFocalLoss", mmdet.mmdet_quality_focal_loss, num_inputs=3),
    Declaration("VarifocalLoss", mmdet.mmdet_varifocal_loss),
    Declaration("DistributionFocalLoss", quality.distribution_focal_loss),
    Declaration("GaussianFocalLoss", focal.gaussian_focal_loss),
    # boxes
    Declaration("IoULoss", iou.iou_loss),
    Declaration("GIoULoss", iou.giou_loss),
    Declaration("DIoULoss", iou.diou_loss),
    Declaration("CIoULoss", iou.ciou_loss),
    Declaration("EIoULoss", iou.eiou_loss),
    Declaration("SIoULoss", iou.siou_loss),
    # segmentation
    Declaration("DiceLoss", region.dice_loss),
    Declaration("JaccardLoss", region.jaccard_loss),
    Declaration("TverskyLoss", region.tversky_loss),
    Declaration("GeneralizedDiceLoss", region.generalized_dice_loss),
    Declaration("LovaszSoftmaxLoss", lovasz.lovasz_softmax_loss),
    Declaration("LovaszHingeLoss", lovasz.lovasz_hinge_loss),
    Declaration("FocalLossPixelwise", focal.softmax_focal_loss),
    Declaration("MaskLoss", composite.mask_loss),
    Declaration("CombinedSegmentationLoss", composite.combined_segmentation_loss),
    Declaration("FocalDiceLoss", composite.focal_dice_loss),
    Declaration("SoftclDiceLoss", topology.cldice_loss),
    Declaration("SoftDiceclDiceLoss", topology.dice_cldice_loss),
    Declaration("HausdorffDTLoss", boundary.hausdorff_dt_loss),
    Declaration("HausdorffERLoss", boundary.hausdorff_er_loss),
    Declaration("BoundaryLoss", boundary.boundary_loss),
    Declaration("OHEMCrossEntropyLoss", ohem.ohem_cross_entropy),
    Declaration("MCCLoss", mcc.mcc_loss),
    # MONAI's compound losses with MONAI's own keywords
    Declaration("DiceCELoss", monai.monai_dice_ce_loss),
    Declaration("DiceFocalLoss", monai.monai_dice_focal_loss),
    # segmentation quick reference: build_loss(dict(type="dice", dice_smooth=1.0, ...))
    Declaration("ce", quick.quick_ce_loss, flax=False),
    Declaration("weighted_ce", quick.quick_weighted_ce_loss, flax=False),
    Declaration("focal", quick.quick_focal_loss, flax=False),
    Declaration("dice", quick.quick_dice_loss, flax=False),
    Declaration("focal_dice", quick.quick_focal_dice_loss, flax=False),
    Declaration("tversky", quick.quick_tversky_loss, flax=False),
    # dense detection: (cls, box[, ctr/objectness], gt_boxes, gt_labels, gt_mask)
    Declaration("FCOSLoss", fcos.fcos_loss, num_inputs=6),
    Declaration("CenternessLoss", fcos.centerness_loss),
    Declaration("YOLOv8Loss", yolo.yolov8_loss, num_inputs=5),
    Declaration("YOLOXLoss", yolo.yolox_loss, num_inputs=6),
    Declaration("RetinaNetLoss", retinanet.retinanet_loss, num_inputs=5),
    Declaration("GFLLoss", gfl.gfl_loss, num_inputs=5),
    # set prediction: (cls_logits, box_preds, gt_boxes, gt_labels, gt_mask[, aux_cls, aux_box])
    Declaration("DETRLoss", adaptors.registry_detr_loss, num_inputs=(5, 7)),
    # (cls_logits, mask_logits, gt_masks, gt_labels, gt_mask, key)
    Declaration("Mask2FormerLoss", adaptors.registry_mask2former_loss, num_inputs=6),
)


def _index(declarations) -> dict[str, Declaration]:
  table = {}
  for d in declarations:
    for key in (d.name, *d.aliases):
      if key in table:
        raise ValueError(f"loss name {key!r} is declared twice")
      table[key] = d
  return table


_BY_NAME = _index(DECLARATIONS)


def flax_declarations() -> tuple[Declaration, ...]:
  """The declarations that get Flax wrapper classes."""
  return tuple(d for d in DECLARATIONS if d.flax)


def list_losses() -> list[str]:
  """Names :func:`build_loss` accepts (class names and aliases), sorted."""
  return sorted(_BY_NAME)


def get_declaration(name: str) -> Declaration:
  """The :class:`Declaration` registered under ``name``, an alias, or mmdetection 3's scoped
  form ``"mmdet.FocalLoss"`` (scope ``mmdet`` only)."""
  if not isinstance(name, str):
    raise TypeError(f"the loss `type` must be a string such as 'FocalLoss', got "
                    f"{type(name).__name__}.")
  scope, dot, bare = name.rpartition(".")
  if dot and scope != "mmdet":
    raise ValueError(f"unknown scope {scope!r} in type {name!r}: jaxloss reads mmdetection "
                     f"configs, so the only scope is 'mmdet' (e.g. 'mmdet.FocalLoss').")
  if bare not in _BY_NAME:
    raise ValueError(
        f"unknown loss type {name!r}; valid types are: {', '.join(list_losses())}.")
  return _BY_NAME[bare]




def check_config(decl: Declaration, config: Mapping[str, Any]) -> None:
  """Checks a config's keywords and value types when the loss is built.

  Raises:
    ValueError: an unknown keyword (the valid ones are named), or a value the loss refuses
      (``FocalLoss(use_sigmoid=False)``, an unknown ``reduction``).
    TypeError: a value of the wrong type, such as a string where a number belongs (YAML
      reads ``1e-6`` as the string ``'1e-6'``; write ``1.0e-6``) or a nested dict.
  """
  valid = (*decl.hyperparameters, *WRAPPER_KEYWORDS)
  unknown = sorted(set(config) - set(valid))
  if unknown:
    raise ValueError(
        f"{decl.name} got unknown keyword(s) {unknown}; valid keywords are: "
        f"{', '.join(valid)}.")
  defaults = {**decl.hyperparameters, "loss_weight": 1.0, "reduction": "mean"}
  for key, value in config.items():
    _check_value_type(decl, key, value, defaults[key])
  if "reduction" in config and config["reduction"] is not None:
    check_reduction(config["reduction"])
  if config.get("use_sigmoid", True) is False and "use_sigmoid" in decl.hyperparameters \
      and decl.hyperparameters["use_sigmoid"] is True:
    raise ValueError(f"{decl.name} is a sigmoid loss; use_sigmoid=False is not supported "
                     f"(use SoftmaxFocalLoss / softmax_focal_loss for a softmax focal loss).")


def _check_value_type(decl: Declaration, key: str, value: Any, default: Any) -> None:
  where = f"{decl.name}: `{key}`"
  if isinstance(value, Mapping):
    raise TypeError(f"{where} got a nested dict {dict(value)!r}; pass its value directly.")
  if isinstance(default, bool):
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f"{where} must be a bool (True or False), got {value!r}.")
  elif isinstance(default, (int, float)) and isinstance(value, str):
    raise TypeError(
        f"{where} must be a number, got the string {value!r}; YAML reads '1e-6' as a string: "
        f"write 1.0e-6 (or convert it with float() before build_loss).")
  elif isinstance(value, str) and not _takes_string(decl, key, default):
    hint = class_weight_hint(key) if key == "class_weight" else ""
    raise TypeError(f"{where} does not take a string, got {value!r}.{hint}")


def _takes_string(decl: Declaration, key: str, default: Any) -> bool:
  if isinstance(default, str) or key == "reduction":
    return True
  parameter = decl.signature.parameters.get(key)
  annotation = "" if parameter is None else str(parameter.annotation)
  return "str" in annotation or "Literal" in annotation


def scale_output(out: Any, loss_weight: float) -> Any:
  """Multiplies a loss (or every ``*loss*`` entry of a dict of them)."""
  if loss_weight == 1.0:
    return out
  if isinstance(out, Mapping):
    return {k: (v * loss_weight if "loss" in k else v) for k, v in out.items()}
  return jax.tree.map(lambda v: v * loss_weight, out)
