"""Registry, build_loss and the generated Flax NNX and Linen wrappers."""

import inspect
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxloss
from jaxloss import linen as jlinen
from jaxloss import nnx as jnnx
from jaxloss.configs import registry

RNG = np.random.default_rng(3)


def _regression():
  return RNG.normal(size=(3, 4)).astype(np.float32), RNG.normal(size=(3, 4)).astype(np.float32)


def _logits_labels():
  return RNG.normal(size=(3, 4)).astype(np.float32), np.array([0, 3, 4], np.int32)


def _logits_soft():
  return RNG.normal(size=(3, 4)).astype(np.float32), RNG.uniform(size=(3, 4)).astype(np.float32)


def _logits_labels_scores():
  return (*_logits_labels(), RNG.uniform(size=3).astype(np.float32))


def _bins():
  return RNG.normal(size=(3, 5)).astype(np.float32), np.array([0.0, 2.5, 4.0], np.float32)


def _heatmap():
  probs, heat = RNG.uniform(0.05, 0.95, size=(2, 3, 4)).astype(np.float32)
  return probs, np.where(heat > 0.8, 1.0, heat).astype(np.float32)


def _boxes():
  xy = RNG.uniform(0, 20, (3, 2))
  pred = np.concatenate([xy, xy + RNG.uniform(1, 10, (3, 2))], -1).astype(np.float32)
  return pred, pred + RNG.uniform(-1, 1, (3, 4)).astype(np.float32)


def _segmentation():
  logits = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
  labels = RNG.integers(0, 3, size=(2, 4, 4))
  labels[0, 0] = 255
  return logits, labels


def _masks():
  return RNG.normal(size=(3, 4, 4)).astype(np.float32), RNG.integers(0, 2, (3, 4, 4)) * 1.0


def _binary_segmentation():
  return RNG.normal(size=(2, 4, 4)).astype(np.float32), RNG.integers(0, 2, size=(2, 4, 4))


def _fcos():
  """A 64x64 image's five levels (strides 8..128), 3 classes, 2 padded boxes."""
  shapes = [(1, 8, 8), (1, 4, 4), (1, 2, 2), (1, 1, 1), (1, 1, 1)]
  level = lambda k, scale=1.0: [(RNG.normal(size=(*s, k)) * scale).astype(np.float32)
                                for s in shapes]
  boxes = np.array([[[4, 6, 40, 30], [0, 0, 0, 0]]], np.float32)
  return (level(3), [np.abs(x) + 0.5 for x in level(4)], level(1), boxes,
          np.array([[2, 0]], np.int32), np.array([[True, False]]))


def _detr():
  """2 images, 4 queries, 3 classes + no object, 2 padded targets, 1 aux layer (last inputs)."""
  box = lambda *s: np.concatenate([RNG.uniform(0.3, 0.7, (*s, 2)), RNG.uniform(0.1, 0.3, (*s, 2))],
                                  -1).astype(np.float32)
  return (RNG.normal(size=(2, 4, 4)).astype(np.float32), box(2, 4), box(2, 2),
          np.array([[0, 2], [1, 0]], np.int32), np.array([[True, True], [True, False]]),
          RNG.normal(size=(1, 2, 4, 4)).astype(np.float32), box(1, 2, 4))


def _mask2former():
  """2 images, 3 queries, 2 classes + no object, 2 padded masks, and the PRNG key."""
  return (RNG.normal(size=(2, 3, 3)).astype(np.float32),
          RNG.normal(size=(2, 3, 4, 4)).astype(np.float32),
          (RNG.uniform(size=(2, 2, 8, 8)) < 0.5).astype(np.float32),
          np.array([[0, 1], [1, 0]], np.int32), np.array([[True, True], [True, False]]),
          jax.random.key(0))


# One row per declaration: a function making sample inputs, and hyper-parameters
# that differ from the defaults (so that the wrappers are seen to pass them on).
SAMPLES = {
    "L1Loss": (_regression, {}),
    "MSELoss": (_regression, {}),
    "SmoothL1Loss": (_regression, {"beta": 0.3}),
    "BalancedL1Loss": (_regression, {"alpha": 0.4, "gamma": 1.2}),
    # classification
    "CrossEntropyLoss": (_logits_labels, {"class_weight": np.array([1.0, 2.0, 0.5, 1.0]),
                                          "avg_non_ignore": True, "ignore_index": 3}),
    "BinaryCrossEntropyLoss": (_logits_soft, {"label_smoothing": 0.1}),
    "FocalLoss": (_logits_labels, {"gamma": 1.5, "alpha": 0.3}),
    "SoftmaxFocalLoss": (_logits_labels, {"gamma": 1.0, "ignore_index": 3}),
    "QualityFocalLoss": (_logits_labels_scores, {"beta": 1.5}),
    "VarifocalLoss": (_logits_soft, {"alpha": 0.5, "iou_weighted": False}),
    "DistributionFocalLoss": (_bins, {}),
    "GaussianFocalLoss": (_heatmap, {"gamma": 3.0}),
    # boxes
    "IoULoss": (_boxes, {"mode": "linear", "eps": 1e-5}),
    "GIoULoss": (_boxes, {"eps": 1e-6}),
    "DIoULoss": (_boxes, {"box_format": "xywh"}),
    "CIoULoss": (_boxes, {"eps": 1e-6}),
    "EIoULoss": (_boxes, {"smooth_point": 0.1}),
    "SIoULoss": (_boxes, {"neg_gamma": True}),


    # segmentation
    "DiceLoss": (_segmentation, {"smooth": 0.5, "per_image": True, "classes": "present",
                                 "ignore_index": 255}),
    "JaccardLoss": (_segmentation, {"squared": True, "ignore_index": 255}),
    "TverskyLoss": (_segmentation, {"alpha": 0.3, "beta": 0.7, "gamma": 1.5,
                                    "ignore_index": 255}),
    "GeneralizedDiceLoss": (_segmentation, {"weight_type": "simple", "ignore_index": 255}),
    "LovaszSoftmaxLoss": (_segmentation, {"per_image": True, "ignore_index": 255}),
    "LovaszHingeLoss": (_binary_segmentation, {"per_image": True}),
    "FocalLossPixelwise": (_segmentation, {"gamma": 1.5, "ignore_index": 255}),
    "MaskLoss": (_masks, {"pos_weight": 2.0}),
    "CombinedSegmentationLoss": (_segmentation, {"ce_weight": 0.7, "dice_weight": 0.3,
                                                 "class_weight": [1.0, 2.0, 3.0],
                                                 "ignore_index": 255}),
    "FocalDiceLoss": (_segmentation, {"focal_gamma": 1.0, "dice_smooth": 0.5,
                                      "ignore_index": 255}),
    "ce": (_segmentation, {"ignore_index": 255, "num_classes": 3}),
    "weighted_ce": (_segmentation, {"ignore_index": 255}),
    "focal": (_segmentation, {"focal_gamma": 1.0, "use_class_weighting": True,
                              "ignore_index": 255}),
    "dice": (_segmentation, {"dice_smooth": 0.5, "ignore_index": 255}),
    "focal_dice": (_segmentation, {"focal_weight": 0.3, "dice_weight": 0.7,
                                   "ignore_index": 255}),
    "tversky": (_segmentation, {"tversky_alpha": 0.3, "tversky_beta": 0.7,
                                "ignore_index": 255}),
    # dense detection
    "FCOSLoss": (_fcos, {"num_classes": 3, "center_sampling": False, "focal_gamma": 1.5}),
    "CenternessLoss": (_logits_soft, {}),
    # set prediction
    "DETRLoss": (_detr, {"num_classes": 3, "eos_coef": 0.2, "giou_weight": 1.0}),
    "Mask2FormerLoss": (_mask2former, {"num_classes": 2, "num_points": 16, "dice_weight": 2.0}),
}


def _yolo():
  """A 64x64 image's three levels (strides 8, 16, 32), 3 classes, 16 bins, 2 padded boxes."""
  shapes = [(1, 8, 8), (1, 4, 4), (1, 2, 2)]
  level = lambda k: [RNG.normal(size=(*s, k)).astype(np.float32) for s in shapes]
  boxes = np.array([[[4, 6, 40, 30], [0, 0, 0, 0]]], np.float32)
  return level(3), level(64), boxes, np.array([[2, 0]], np.int32), np.array([[True, False]])


SAMPLES["YOLOv8Loss"] = (_yolo, {"num_classes": 3, "topk": 4, "box_weight": 2.0})


def _yolox():
  """As _yolo, with YOLOX's heads: raw (dx, dy, log w, log h) and objectness logits."""
  shapes = [(1, 8, 8), (1, 4, 4), (1, 2, 2)]
  level = lambda k: [RNG.normal(size=(*s, k)).astype(np.float32) for s in shapes]
  boxes = np.array([[[4, 6, 40, 30], [0, 0, 0, 0]]], np.float32)
  return (level(3), level(4), level(1), boxes, np.array([[2, 0]], np.int32),
          np.array([[True, False]]))


SAMPLES["YOLOXLoss"] = (_yolox, {"num_classes": 3, "use_l1": True, "candidate_topk": 5})
def _anchor_heads(channels):
  """A 32x32 image's two levels (strides 8, 16) with the given head channels, 2 classes,
  one real and one padded box."""
  shapes = [(1, 4, 4), (1, 2, 2)]
  level = lambda k: [RNG.normal(size=(*s, k)).astype(np.float32) for s in shapes]
  boxes = np.array([[[4, 6, 20, 26], [0, 0, 0, 0]]], np.float32)
  return (level(channels[0]), level(channels[1]), boxes, np.array([[1, 0]], np.int32),
          np.array([[True, False]]))


SAMPLES["RetinaNetLoss"] = (lambda: _anchor_heads((9 * 2, 9 * 4)), {
    "num_classes": 2, "strides": (8, 16), "box_loss": "giou", "neg_iou_thr": [0.1, 0.4]})
SAMPLES["GFLLoss"] = (lambda: _anchor_heads((2, 4 * 8)), {
    "num_classes": 2, "strides": (8, 16), "reg_max": 7, "topk": 3})


# Sums of a pixelwise and a region term: a scalar, so no reduction="none".
SCALAR_ONLY = {"CombinedSegmentationLoss", "FocalDiceLoss"}
# MONAI's compound losses (DESIGN section 6), with MONAI's keywords.
SAMPLES["DiceCELoss"] = (_segmentation, {"softmax": True, "lambda_ce": 0.5, "batch": True})
SAMPLES["DiceFocalLoss"] = (_segmentation, {"softmax": True, "gamma": 1.5, "smooth_nr": 0.0})
SCALAR_ONLY |= {"DiceCELoss", "DiceFocalLoss"}


def _logits_distance_maps():
  logits, labels = _segmentation()
  one_hot = np.moveaxis(np.eye(3, dtype=bool)[np.where(labels == 255, 0, labels)], -1, 1)
  dist = jaxloss.signed_distance_map(one_hot.reshape(6, 4, 4)).reshape(2, 3, 4, 4)
  return logits, np.moveaxis(np.asarray(dist), 1, -1)


# Segmentation additions (DESIGN section 6).
SAMPLES["SoftclDiceLoss"] = (_segmentation, {"iters": 2, "ignore_index": 255})
SAMPLES["SoftDiceclDiceLoss"] = (_segmentation, {"alpha": 0.3, "ignore_index": 255})
SAMPLES["HausdorffDTLoss"] = (_segmentation, {"alpha": 1.5, "ignore_index": 255})
SAMPLES["HausdorffERLoss"] = (_segmentation, {"k": 3, "ignore_index": 255})
SAMPLES["BoundaryLoss"] = (_logits_distance_maps, {"include_background": True})
SAMPLES["OHEMCrossEntropyLoss"] = (_segmentation, {"thresh": 0.5, "min_kept": 3,
                                                   "ignore_index": 255})
SAMPLES["MCCLoss"] = (_segmentation, {"per_image": True, "ignore_index": 255})


def test_every_declaration_has_a_sample():
  assert set(SAMPLES) == {d.name for d in registry.DECLARATIONS}


def _times(expected, factor):
  """The loss scaled by loss_weight, written independently of registry.scale_output."""
  if isinstance(expected, dict):
    return {k: v * factor if k.endswith("loss") or k == "loss" else v
            for k, v in expected.items()}
  return expected * factor


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_build_and_wrappers_match_function(name):
  make, hparams = SAMPLES[name]
  inputs = make()
  decl = registry.get_declaration(name)
  expected = decl.fn(*inputs, **hparams)
  built = jaxloss.build_loss(dict(type=name, loss_weight=2.0, **hparams))
  _close(built(*inputs), _times(expected, 2.0))
  if decl.flax:
    nnx_loss = getattr(jnnx, name)(**hparams)
    _close(nnx_loss(*inputs), expected)
    linen_loss = getattr(jlinen, name)(loss_weight=0.5, **hparams)
    _close(linen_loss.apply({}, *inputs), _times(expected, 0.5))
    assert set(inspect.signature(getattr(jnnx, name).__init__).parameters) >= set(hparams)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_reduction_override_and_weight(name):
  make, hparams = SAMPLES[name]
  decl = registry.get_declaration(name)
  if decl.default_reduction is None:
    pytest.skip("loss has no reduction")
  inputs = make()
  loss = jaxloss.build_loss(dict(type=name, **hparams), backend="nnx")
  _close(loss(*inputs, reduction_override="sum"), decl.fn(*inputs, reduction="sum", **hparams))
  if name in SCALAR_ONLY:
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
      loss(*inputs, reduction_override="none")
  else:
    _close(loss(*inputs, reduction_override="none"),
           decl.fn(*inputs, reduction="none", **hparams))
  if "avg_factor" in decl.common:
    _close(loss(*inputs, avg_factor=5.0), decl.fn(*inputs, avg_factor=5.0, **hparams))
  if "weight" in decl.common:
    weighted = decl.fn(*inputs, weight=0.25, reduction="sum", **hparams)
    _close(loss(*inputs, weight=0.25, reduction_override="sum"), weighted)
    if len(decl.input_counts(hparams)) == 1:  # positionally, as mmdetection's heads pass it
      _close(loss(*inputs, 0.25, None, "sum"), weighted)
  _close(jax.jit(lambda *a: loss(*a))(*inputs), decl.fn(*inputs, **hparams))


def test_unknown_type_and_keyword_list_the_valid_ones():
  with pytest.raises(ValueError, match="SmoothL1Loss"):
    jaxloss.build_loss(dict(type="SmoothL2Loss"))
  with pytest.raises(ValueError, match="valid keywords are: beta"):
    jaxloss.build_loss(dict(type="SmoothL1Loss", bta=1.0))
  with pytest.raises(TypeError, match="bta"):  # a real constructor signature
    jnnx.SmoothL1Loss(bta=1.0)
  with pytest.raises(ValueError, match="backend"):
    jaxloss.build_loss(dict(type="L1Loss"), backend="torch")
  with pytest.raises(ValueError, match="'type'"):
    jaxloss.build_loss({"beta": 1.0})


def test_missing_required_hyperparameter_is_named():
  with pytest.raises(TypeError, match="num_classes"):
    jaxloss.build_loss(dict(type="FCOSLoss"))(*_fcos())


def test_list_losses_and_wrapper_modules_agree():
  names = jaxloss.list_losses()
  assert names == sorted(names)
  for decl in registry.flax_declarations():
    assert decl.name in names
    assert decl.name in jnnx.__all__ and decl.name in jlinen.__all__


def test_wrapper_families_are_attributes_of_the_package():
  code = "import jaxloss; print(jaxloss.nnx.FocalLoss.__name__, jaxloss.linen.DiceLoss.__name__)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["FocalLoss", "DiceLoss"]


def test_built_loss_passes_axis_name(devices):
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P
  pred, target = (RNG.normal(size=(8, 4)).astype(np.float32) for _ in range(2))
  where = RNG.uniform(size=(8, 4)) > 0.3
  loss = jaxloss.build_loss(dict(type="SmoothL1Loss", beta=0.5), backend="nnx")
  mesh = Mesh(np.array(devices[:4]), ("data",))

  def per_device(p, t, w):
    return jax.lax.pmean(loss(p, t, where=w, axis_name="data"), "data")

  out = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P())(
      pred, target, where)
  np.testing.assert_allclose(out, jaxloss.smooth_l1_loss(pred, target, beta=0.5, where=where),
                             rtol=1e-6)


def test_weighted_ce_axis_name_weighs_classes_over_the_whole_batch(devices):
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P
  logits = RNG.normal(size=(16, 3)).astype(np.float32)
  labels = np.array([0] * 6 + [1] * 2 + [0, 2, 2, 2, 1, 255, 0, 2])  # shards differ
  loss = jaxloss.build_loss(dict(type="weighted_ce", ignore_index=255))
  mesh = Mesh(np.array(devices[:4]), ("data",))

  def per_device(x, y):
    return jax.lax.pmean(loss(x, y, axis_name="data"), "data")

  out = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"),) * 2,
                              out_specs=P()))(logits, labels)
  np.testing.assert_allclose(out, loss(logits, labels), rtol=1e-6)
