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

from jaxloss import classification, fcos, iou, regression, segmentation
from jaxloss.detection.losses import detr, mask2former

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
      this name (``False`` for config shorthands such as ``"dice"``).
  """
  name: str
  fn: Callable[..., Any]
  num_inputs: int | tuple[int, ...] = 2
  aliases: tuple[str, ...] = ()
  flax: bool = True

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
    Declaration("CrossEntropyLoss", classification._mmdet_cross_entropy, num_inputs=(2, 3)),
    Declaration("BinaryCrossEntropyLoss", classification.binary_cross_entropy),
    Declaration("FocalLoss", classification._mmdet_focal_loss),
    Declaration("SoftmaxFocalLoss", classification.softmax_focal_loss),
    Declaration("QualityFocalLoss", classification._mmdet_quality_focal_loss, num_inputs=3),
    Declaration("VarifocalLoss", classification._mmdet_varifocal_loss),
    Declaration("DistributionFocalLoss", classification.distribution_focal_loss),
    Declaration("GaussianFocalLoss", classification.gaussian_focal_loss),
    # boxes
    Declaration("IoULoss", iou.iou_loss),
    Declaration("GIoULoss", iou.giou_loss),
    Declaration("DIoULoss", iou.diou_loss),
    Declaration("CIoULoss", iou.ciou_loss),
    Declaration("EIoULoss", iou.eiou_loss),
    Declaration("SIoULoss", iou.siou_loss),
    # segmentation
    Declaration("DiceLoss", segmentation.dice_loss),
    Declaration("JaccardLoss", segmentation.jaccard_loss),
    Declaration("TverskyLoss", segmentation.tversky_loss),
    Declaration("GeneralizedDiceLoss", segmentation.generalized_dice_loss),
    Declaration("LovaszSoftmaxLoss", segmentation.lovasz_softmax_loss),
    Declaration("LovaszHingeLoss", segmentation.lovasz_hinge_loss),
    Declaration("FocalLossPixelwise", classification.softmax_focal_loss),
    Declaration("MaskLoss", segmentation.mask_loss),
    Declaration("CombinedSegmentationLoss", segmentation.combined_segmentation_loss),
    Declaration("FocalDiceLoss", segmentation.focal_dice_loss),
    # segmentation quick reference: build_loss(dict(type="dice", dice_smooth=1.0, ...))
    Declaration("ce", segmentation.quick_ce_loss, flax=False),
    Declaration("weighted_ce", segmentation.quick_weighted_ce_loss, flax=False),
    Declaration("focal", segmentation.quick_focal_loss, flax=False),
    Declaration("dice", segmentation.quick_dice_loss, flax=False),
    Declaration("focal_dice", segmentation.quick_focal_dice_loss, flax=False),
    Declaration("tversky", segmentation.quick_tversky_loss, flax=False),
    # dense detection
    Declaration("FCOSLoss", fcos.fcos_loss, num_inputs=6),
    Declaration("CenternessLoss", fcos.centerness_loss),
    # set prediction: (cls_logits, box_preds, gt_boxes, gt_labels, gt_mask[, aux_cls, aux_box])
    Declaration("DETRLoss", detr.registry_detr_loss, num_inputs=(5, 7)),
    # (cls_logits, mask_logits, gt_masks, gt_labels, gt_mask, key)
    Declaration("Mask2FormerLoss", mask2former.registry_mask2former_loss, num_inputs=6),
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


def wrapper_signature(decl: Declaration) -> inspect.Signature:
  """Keyword-only constructor signature of a wrapper: hyper-parameters,
  ``reduction`` and ``loss_weight``."""
  params = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
            for k, v in decl.hyperparameters.items()]
  if decl.default_reduction is not None:
    params.append(inspect.Parameter("reduction", inspect.Parameter.KEYWORD_ONLY,
                                    default=decl.default_reduction))
  params.append(inspect.Parameter("loss_weight", inspect.Parameter.KEYWORD_ONLY,
                                  default=1.0))
  return inspect.Signature(params)


def wrapper_doc(decl: Declaration, family: str) -> str:
  return (f"{family} wrapper of :func:`jaxloss.{decl.fn.__name__}`.\n\n"
          f"Constructed with its hyper-parameters plus ``loss_weight`` and "
          f"``reduction``; called as ``loss(*inputs, weight=None, avg_factor=None, "
          f"reduction_override=None, where=None, axis_name=None)``.\n")


def list_losses() -> list[str]:
  """Names :func:`build_loss` accepts (class names and aliases), sorted."""
  return sorted(_BY_NAME)


def get_declaration(name: str) -> Declaration:
  """The :class:`Declaration` registered under ``name`` (or an alias)."""
  if not isinstance(name, str) or name not in _BY_NAME:
    raise ValueError(
        f"unknown loss type {name!r}; valid types are: {', '.join(list_losses())}.")
  return _BY_NAME[name]


def check_config(decl: Declaration, kwargs: Mapping[str, Any]) -> None:
  """``ValueError`` naming the valid keywords if ``kwargs`` has an unknown one."""
  valid = (*decl.hyperparameters, *WRAPPER_KEYWORDS)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(
        f"{decl.name} got unknown keyword(s) {unknown}; valid keywords are: "
        f"{', '.join(valid)}.")


def scale_output(out: Any, loss_weight: float) -> Any:
  """Multiplies a loss (or every ``*loss*`` entry of a dict of them)."""
  if loss_weight == 1.0:
    return out
  if isinstance(out, Mapping):
    return {k: (v * loss_weight if "loss" in k else v) for k, v in out.items()}
  return jax.tree.map(lambda v: v * loss_weight, out)


def call_declared(decl: Declaration, hparams: Mapping[str, Any], reduction: str | None,
                  loss_weight: float, inputs: tuple, weight=None, avg_factor=None,
                  reduction_override=None, where=None, axis_name=None) -> Any:
  """Calls ``decl.fn`` the way mmdetection's loss modules do."""
  counts = decl.num_inputs if isinstance(decl.num_inputs, tuple) else (decl.num_inputs,)
  if len(inputs) not in counts:
    raise TypeError(
        f"{decl.name} takes {' or '.join(map(str, counts))} positional inputs, "
        f"got {len(inputs)}.")
  missing = [k for k, v in hparams.items() if v is inspect.Parameter.empty]
  if missing:
    raise TypeError(f"{decl.name} needs the hyper-parameter(s) {missing} (no default); "
                    f"pass them when building it, e.g. {missing[0]}=...")
  kwargs = dict(hparams)
  given = {"weight": weight, "avg_factor": avg_factor, "where": where,
           "reduction": reduction_override or reduction, "axis_name": axis_name}
  for key, value in given.items():
    if value is None:
      continue
    if key not in decl.common:
      raise TypeError(f"{decl.name} does not take `{key}`.")
    kwargs[key] = value
  return scale_output(decl.fn(*inputs, **kwargs), loss_weight)


class Loss:
  """A configured loss: a plain callable made by :func:`build_loss`.

  Called as ``loss(*inputs, weight=None, avg_factor=None,
  reduction_override=None, where=None, axis_name=None)``, like an mmdetection loss
  module.
  """

  def __init__(self, declaration: Declaration, *, loss_weight: float = 1.0,
               reduction: str | None = None, **hparams: Any):
    check_config(declaration, hparams)
    self.declaration = declaration
    self.hparams = {**declaration.hyperparameters, **hparams}
    self.reduction = reduction if reduction is not None else declaration.default_reduction
    self.loss_weight = loss_weight

  def __call__(self, *inputs, weight=None, avg_factor=None, reduction_override=None,
               where=None, axis_name=None):
    return call_declared(self.declaration, self.hparams, self.reduction, self.loss_weight,
                         inputs, weight, avg_factor, reduction_override, where, axis_name)

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
    return f"{self.declaration.name}({args}, loss_weight={self.loss_weight})"


_BACKENDS = ("function", "nnx", "linen")


def build_loss(config: Mapping[str, Any], *, backend: str = "function") -> Any:
  """Builds a loss from a config dict such as ``dict(type="FocalLoss", gamma=2.0)``.

  Args:
    config: ``type`` (a name of :func:`list_losses`) plus the loss's
      hyper-parameters, ``loss_weight`` and ``reduction``.
    backend: ``"function"`` (a plain callable :class:`Loss`), ``"nnx"``
      (a :mod:`jaxloss.nnx` module) or ``"linen"`` (a :mod:`jaxloss.linen`
      module).

  Returns:
    The loss, called as ``loss(pred, target, weight=None, avg_factor=None,
    reduction_override=None)``.

  Raises:
    ValueError: unknown type, keyword or backend.

  Example:
    >>> import jax.numpy as jnp, jaxloss
    >>> loss = jaxloss.build_loss(dict(type="SmoothL1Loss", beta=0.5, loss_weight=2.0))
    >>> pred, target = jnp.array([0.25, 2.0]), jnp.zeros(2)
    >>> print(loss(pred, target))                    # 2 * mean([0.0625, 1.75])
    1.8125
    >>> print(loss(pred, target, reduction_override="sum"))
    3.625
    >>> jaxloss.build_loss(dict(type="SmoothL1Loss", delta=1.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    ValueError: SmoothL1Loss got unknown keyword(s) ['delta']; valid keywords are: beta, ...
  """
  if not isinstance(config, Mapping) or "type" not in config:
    raise ValueError(f"build_loss expects a dict with a 'type' key, got {config!r}.")
  kwargs = dict(config)
  decl = get_declaration(kwargs.pop("type"))
  check_config(decl, kwargs)
  if backend == "function":
    return Loss(decl, **kwargs)
  if backend == "nnx":
    from jaxloss import nnx
    return getattr(nnx, decl.name)(**kwargs)
  if backend == "linen":
    from jaxloss import linen
    return getattr(linen, decl.name)(**kwargs)
  raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")


# Dense detection, anchor-free assigners and one-stage detector losses (DESIGN section 5):
# appended as their own block, so that declarations added on other branches merge cleanly.
from jaxloss.detection.losses import yolo  # noqa: E402

DECLARATIONS = (*DECLARATIONS, Declaration("YOLOv8Loss", yolo.yolov8_loss, num_inputs=5),
                Declaration("YOLOXLoss", yolo.yolox_loss, num_inputs=6))
# Anchor-based dense detection (DESIGN section 5): RetinaNet and GFL, appended as their own
# block, so that declarations added on other branches merge cleanly.
from jaxloss.detection.losses import gfl as _gfl  # noqa: E402
from jaxloss.detection.losses import retinanet as _retinanet  # noqa: E402

DECLARATIONS = (*DECLARATIONS,
                Declaration("RetinaNetLoss", _retinanet.retinanet_loss, num_inputs=5),
                Declaration("GFLLoss", _gfl.gfl_loss, num_inputs=5))
_BY_NAME = _index(DECLARATIONS)
# MONAI's compound segmentation losses with MONAI's own keywords (DESIGN section 6), appended
# as their own block, so that declarations added on other branches merge cleanly.
from jaxloss import monai_losses as _monai  # noqa: E402

DECLARATIONS = (*DECLARATIONS, Declaration("DiceCELoss", _monai.monai_dice_ce_loss),
                Declaration("DiceFocalLoss", _monai.monai_dice_focal_loss))
_BY_NAME = _index(DECLARATIONS)
# Segmentation additions (DESIGN section 6): topology, distance-based, OHEM and MCC losses,
# appended as their own block, so that declarations added on other branches merge cleanly.
from jaxloss import boundary as _boundary  # noqa: E402
from jaxloss import mcc as _mcc  # noqa: E402
from jaxloss import ohem as _ohem  # noqa: E402
from jaxloss import topology as _topology  # noqa: E402

DECLARATIONS = (*DECLARATIONS,
                Declaration("SoftclDiceLoss", _topology.cldice_loss),
                Declaration("SoftDiceclDiceLoss", _topology.dice_cldice_loss),
                Declaration("HausdorffDTLoss", _boundary.hausdorff_dt_loss),
                Declaration("HausdorffERLoss", _boundary.hausdorff_er_loss),
                Declaration("BoundaryLoss", _boundary.boundary_loss),
                Declaration("OHEMCrossEntropyLoss", _ohem.ohem_cross_entropy),
                Declaration("MCCLoss", _mcc.mcc_loss))
_BY_NAME = _index(DECLARATIONS)
