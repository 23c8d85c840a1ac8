"""The API reference: family pages from :data:`FAMILIES`, wrapper pages from the registry.

A public name is placed on a page by listing it in :data:`FAMILIES`. The build
fails (:func:`check_documented`) when ``jaxloss.__all__`` holds a name that no
page documents, so a new public function cannot ship undocumented. Names of a
family whose module is not in this checkout yet are left out with a note, so
the docs build at every stage of the library's growth.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

from jaxloss_docs.util import write_if_changed

logger = logging.getLogger(__name__)

# (slug, title, modules that define the family, introduction, names)
FAMILIES = (
    ("core", "Reduction, labels and registry", ("_src.reduce", "_src.labels", "configs.build"),
     "The one reduction helper every loss ends in, the label check for debugging "
     "(see :doc:`/debugging`), and config-driven construction "
     "(see :doc:`/conventions` and :doc:`/guides/detectors`).",
     ("reduce_loss", "check_labels", "build_loss", "list_losses")),
    ("kernels", "Fused kernels", ("_src.kernels",),
     "The hot classification losses (sigmoid focal, BCE, softmax cross entropy) and the "
     "softmax region statistics of Dice, Jaccard and Tversky with integer labels run "
     "one-pass ``jax.custom_vjp`` kernels with analytic gradients. Forward-mode autodiff "
     "(``jax.jvp``, ``jax.jacfwd``) needs the plain-autodiff path; see "
     ":doc:`/conventions`.",
     ("fused_kernels", "set_fused_kernels")),
    ("classification", "Classification losses", ("classification",),
     "Logits are ``[..., C]``, class axis last. See :doc:`/guides/classification`.",
     ("binary_cross_entropy", "cross_entropy", "sigmoid_focal_loss", "softmax_focal_loss",
      "quality_focal_loss", "varifocal_loss", "distribution_focal_loss",
      "gaussian_focal_loss")),
    ("regression", "Regression losses", ("regression",),
     "Elementwise: the per-element loss has the shape of ``pred``. "
     "See :doc:`/guides/regression`.",
     ("l1_loss", "mse_loss", "smooth_l1_loss", "balanced_l1_loss")),
    ("boxes", "Box geometry", ("boxes.geometry",),
     "Boxes are ``[..., 4]``, ``xyxy`` unless a format says otherwise. "
     "See :doc:`/guides/boxes`.",
     ("box_convert", "box_area", "box_iou", "generalized_box_iou", "pairwise_box_iou",
      "pairwise_generalized_box_iou", "distance_to_box", "box_to_distance")),
    ("iou", "Box (IoU) losses", ("boxes.iou",),
     "Aligned ``[..., 4]`` pairs; the per-element loss drops the box axis. "
     "See :doc:`/guides/boxes`.",
     ("iou_loss", "giou_loss", "diou_loss", "ciou_loss", "eiou_loss", "siou_loss")),
    ("segmentation", "Segmentation losses",
     ("segmentation.region", "segmentation.lovasz", "segmentation.composite",
      "segmentation.weights"),
     "Logits ``[B, ..., C]``, integer labels ``[B, ...]``. "
     "See :doc:`/guides/segmentation` and :doc:`/guides/imbalanced_segmentation`.",
     ("dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
      "lovasz_softmax_loss", "lovasz_hinge_loss", "mask_loss",
      "combined_segmentation_loss", "focal_dice_loss", "class_weights")),
    ("fcos", "Dense detection (FCOS)",
     ("detection.points", "detection.assigners.fcos", "detection.losses.fcos"),
     "Per-level lists of ``[B, H_l, W_l, ...]`` maps; padded ground truth. "
     "See :doc:`/guides/fcos`.",
     ("fcos_points", "fcos_targets", "centerness_targets", "centerness_loss", "fcos_loss")),
    ("anchor_free", "Dense detection (anchor-free assigners, YOLOv8, YOLOX)",
     ("detection.assigners.task_aligned", "detection.assigners.simota",
      "detection.assigners.dynamic_soft_label", "detection.losses.yolo"),
     "Static-shape assigners inside ``jit`` and the one-stage losses built on them; padded "
     "ground truth ``[B, M]`` with ``gt_mask``.",
     ("TaskAlignedAssignment", "task_aligned_assign", "SimOTAAssignment", "simota_assign",
      "dynamic_soft_label_assign", "yolov8_loss", "yolox_loss")),
    ("anchor_based", "Dense detection (anchors, max-IoU and ATSS assigners, RetinaNet, GFL)",
     ("detection.anchors", "detection.coders", "detection.assigners.max_iou",
      "detection.assigners.atss", "detection.losses.retinanet", "detection.losses.gfl"),
     "mmdetection's anchor generator and delta box coder, its max-IoU and ATSS assigners on "
     "static shapes, and the RetinaNet and GFL head losses; padded ground truth ``[B, M]`` "
     "with ``gt_mask``.",
     ("anchor_grid", "delta_xywh_encode", "delta_xywh_decode", "MaxIoUAssignment",
      "max_iou_assign", "ATSSAssignment", "atss_assign", "retinanet_loss", "gfl_loss")),
    ("set_prediction", "Set prediction (Hungarian matching, DETR, Mask2Former)",
     ("detection.matching.hungarian", "detection.matching.costs", "detection.losses.detr",
      "detection.losses.mask2former"),
     "Exact bipartite matching inside ``jit`` over padded targets, the DETR / "
     "Deformable-DETR criterion and Mask2Former's point-sampled mask criterion.",
     ("Matching", "hungarian_matching", "detr_matching_cost", "detr_loss", "point_sample",
      "uncertain_point_coords", "mask2former_loss")),
    ("topology", "Segmentation: topology (clDice)", ("segmentation.topology",),
     "Soft skeletons and the clDice losses of Shit et al. (CVPR 2021) for thin tubular "
     "structures, as MONAI's ``SoftclDiceLoss`` / ``SoftDiceclDiceLoss``. Inputs as "
     ":func:`jaxloss.dice_loss`.",
     ("soft_skeleton", "cldice_loss", "dice_cldice_loss")),
    ("boundary", "Segmentation: distance maps and boundary loss", ("segmentation.boundary",),
     "An exact, jittable signed Euclidean distance transform, Kervadec et al.'s "
     "boundary loss on it, MONAI's distance-transform and kornia's erosion-based "
     "Hausdorff losses. Inputs as :func:`jaxloss.dice_loss`.",
     ("signed_distance_map", "boundary_loss", "hausdorff_dt_loss", "hausdorff_er_loss")),
    ("ohem", "Segmentation: hard-pixel mining (OHEM)", ("segmentation.ohem",),
     "mmsegmentation's OHEM pixel sampler with the cross entropy, on static shapes.",
     ("ohem_cross_entropy",)),
    ("mcc", "Segmentation: Matthews correlation loss", ("segmentation.mcc",),
     "``1 - MCC`` of soft counts, as segmentation_models_pytorch's ``MCCLoss``.",
     ("mcc_loss",)),
)

WRAPPER_PAGES = (
    ("nnx", "Flax NNX wrappers"),
    ("linen", "Flax Linen wrappers"),
)


def _public() -> list[str]:
  import jaxloss
  return [n for n in jaxloss.__all__ if not n.startswith("__")]


def _family_page(title: str, intro: str, names: tuple[str, ...]) -> str:
  lines = [title, "=" * len(title), "", ".. currentmodule:: jaxloss", "", intro, ""]
  if names:
    lines += [".. autosummary::", "   :toctree: stubs", ""]
    lines += [f"   {n}" for n in names]
    lines.append("")
  return "\n".join(lines)


def _hyperparameters(decl) -> str:
  params = decl.hyperparameters
  if not params:
    return "--"
  return ", ".join(f"``{k}={_render_default(v)}``" for k, v in params.items())


def _render_default(value) -> str:
  if isinstance(value, float) and math.isinf(value):
    return "inf"
  return repr(value)


def _function(fn, public: set[str]) -> str:
  """A link to the public function, or the first docstring line of a config adapter."""
  if fn.__name__ in public:
    return f":func:`jaxloss.{fn.__name__}`"
  summary = (fn.__doc__ or "").strip().splitlines()
  return summary[0] if summary else f"``{fn.__module__}.{fn.__name__}``"


def _registry_table() -> str:
  from jaxloss.configs import registry
  lines = [".. list-table::", "   :header-rows: 1", "   :widths: 18 22 45 15", "",
           "   * - ``type``", "     - function", "     - hyper-parameters (defaults)",
           "     - aliases"]
  public = set(_public())
  for decl in registry.DECLARATIONS:
    aliases = ", ".join(f"``{a}``" for a in decl.aliases) or "--"
    name = f":class:`~jaxloss.nnx.{decl.name}`" if decl.flax else f"``{decl.name}``"
    lines += [f"   * - {name}", f"     - {_function(decl.fn, public)}",
              f"     - {_hyperparameters(decl)}", f"     - {aliases}"]
  return "\n".join(lines) + "\n"


def _wrapper_page(backend: str, title: str) -> str:
  module = importlib.import_module(f"jaxloss.{backend}")
  intro = {
      "nnx": ("Parameter-free ``flax.nnx.Module`` classes, one per registered loss. "
              "Construct with the loss's hyper-parameters plus ``loss_weight`` (and "
              "``reduction``); call as ``loss(*inputs, weight=None, avg_factor=None, "
              "reduction_override=None, where=None)``, like an mmdetection loss module."),
      "linen": ("Parameter-free ``flax.linen.Module`` classes, one per registered loss; "
                "the hyper-parameters, ``reduction`` and ``loss_weight`` are dataclass "
                "fields. Use inside a Linen model, or alone with "
                "``loss.apply({}, pred, target)``."),
  }[backend]
  lines = [title, "=" * len(title), "", f".. module:: jaxloss.{backend}", "", intro, "",
           "Every class wraps the function named in the table of :doc:`registry`; its "
           "constructor keywords are that function's hyper-parameters.", ""]
  for name in module.__all__:
    lines += [f".. autoclass:: {name}", ""]
  return "\n".join(lines)


def _registry_page() -> str:
  title = "Registry: ``build_loss`` types"
  return "\n".join([
      title, "=" * len(title), "", ".. currentmodule:: jaxloss", "",
      "Every ``type`` that :func:`jaxloss.build_loss` accepts, the function it calls and "
      "its hyper-parameters. A config holds ``type``, any of the hyper-parameters, "
      "``loss_weight`` and ``reduction``; unknown types or keywords raise ``ValueError`` "
      "listing the valid ones. The same names are the classes of :mod:`jaxloss.nnx` and "
      ":mod:`jaxloss.linen`. This table is generated from ``jaxloss.configs.registry`` at "
      "build time.", "", _registry_table()])


def write_pages(out: Path) -> None:
  """Writes the family, registry and wrapper pages into ``out``."""
  public = set(_public())
  listed = {f"jaxloss.{n}.rst" for _, _, _, _, names in FAMILIES for n in names if n in public}
  for stub in (out / "stubs").glob("*.rst"):
    if stub.name not in listed:
      stub.unlink()
  unknown = [n for _, _, _, _, names in FAMILIES for n in names if n not in public]
  if unknown:
    raise ExtensionError(f"listed in the API reference but not in jaxloss.__all__: "
                         f"{', '.join(unknown)}; fix the names in docs/_ext/jaxloss_docs/api.py.")
  for slug, title, _, intro, names in FAMILIES:
    write_if_changed(out / f"{slug}.rst", _family_page(title, intro, names))
  write_if_changed(out / "registry.rst", _registry_page())
  for backend, title in WRAPPER_PAGES:
    write_if_changed(out / f"{backend}.rst", _wrapper_page(backend, title))


def check_documented(app, env) -> None:
  """Fails the build if a public symbol has no entry in the API reference."""
  import jaxloss
  documented = set(env.get_domain("py").objects)
  expected = [f"jaxloss.{n}" for n in _public()]
  for backend, _ in WRAPPER_PAGES:
    module = importlib.import_module(f"jaxloss.{backend}")
    expected += [f"jaxloss.{backend}.{n}" for n in module.__all__]
  missing = [n for n in expected if n not in documented]
  if missing:
    raise ExtensionError(
        f"public symbols missing from the API reference: {', '.join(missing)}. "
        "Add each jaxloss.__all__ name to a family of FAMILIES in "
        f"docs/_ext/jaxloss_docs/api.py (jaxloss {jaxloss.__version__}).")


def wrapper_signature(app, what, name, obj, options, signature, return_annotation):
  """Shows a Flax wrapper's constructor keywords, not NNX's ``(*args, **kwargs)``
  metaclass call or Linen's ``parent``/``name`` dataclass fields."""
  decl = getattr(obj, "declaration", None)
  if what != "class" or decl is None or not name.startswith(("jaxloss.nnx.", "jaxloss.linen.")):
    return None
  return str(inspect.signature(obj)), return_annotation


_NAME_LIST = re.compile(r"^(\s+)(\w+(?:,\s*\w+)*),\s*$")


def join_parameter_lists(app, what, name, obj, options, lines):
  """Joins an ``Args:`` entry whose comma-separated names wrap onto the next line.

  jaxloss documents shared arguments together (``gt_boxes, gt_labels, gt_mask:
  ...``); when such a list is wrapped, napoleon would read its first line as a
  parameter without description. Runs before napoleon (lower priority).
  """
  in_args = False
  i = 0
  while i < len(lines):
    stripped = lines[i].strip()
    if stripped in ("Args:", "Arguments:", "Parameters:"):
      in_args = True
    elif stripped and not lines[i].startswith(" "):
      in_args = False
    match = _NAME_LIST.match(lines[i]) if in_args else None
    if match and i + 1 < len(lines) and lines[i + 1].startswith(match.group(1) + " "):
      lines[i:i + 2] = [f"{lines[i].rstrip()} {lines[i + 1].strip()}"]
      continue
    i += 1
