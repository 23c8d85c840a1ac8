"""mmdetection's call styles and configs port unchanged (issue #14, items 1-5)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import linen as jlinen
from jaxloss import nnx as jnnx


def _cls_inputs(rng):
  logits = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  labels = jnp.asarray([0, 1, 4, 2, 3, 4])          # 4 == C: background
  weights = jnp.asarray([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])
  return logits, labels, weights


def _built(config, backend):
  loss = jaxloss.build_loss(config, backend=backend)
  if backend == "linen":
    return lambda *a, **k: loss.apply({}, *a, **k)
  return loss


@pytest.mark.parametrize("backend", ["function", "nnx", "linen"])
def test_weight_avg_factor_and_reduction_override_positionally(rng, backend):
  logits, labels, weights = _cls_inputs(rng)
  loss = _built(dict(type="FocalLoss", gamma=2.0, alpha=0.25, loss_weight=2.0), backend)
  expected = 2.0 * jaxloss.sigmoid_focal_loss(logits, labels, weight=weights[:, None],
                                              avg_factor=3.0)
  np.testing.assert_allclose(loss(logits, labels, weights[:, None], 3.0), expected, rtol=1e-6)
  np.testing.assert_allclose(loss(logits, labels, weights[:, None], avg_factor=3.0), expected,
                             rtol=1e-6)
  summed = loss(logits, labels, weights[:, None], None, "sum")
  np.testing.assert_allclose(summed, 2.0 * jaxloss.sigmoid_focal_loss(
      logits, labels, weight=weights[:, None], reduction="sum"), rtol=1e-6)
  with pytest.raises(TypeError, match="both positionally and as a keyword"):
    loss(logits, labels, weights[:, None], weight=weights[:, None])
  with pytest.raises(TypeError, match="optionally followed by weight, avg_factor"):
    loss(logits, labels, weights, 3.0, "sum", 1)


def test_cross_entropy_third_input_is_weight_unless_use_mask(rng):
  logits, labels, weights = _cls_inputs(rng)
  labels = labels % 4
  ce = jaxloss.build_loss(dict(type="CrossEntropyLoss"))
  np.testing.assert_allclose(ce(logits, labels, weights, 2.0),
                             jnp.sum(weights * jaxloss.cross_entropy(logits, labels,
                                                                     reduction="none")) / 2.0,
                             rtol=1e-6)
  masks = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  target = jnp.asarray(rng.integers(0, 2, size=(2, 3, 3)), jnp.float32)
  mask_ce = jaxloss.build_loss(dict(type="CrossEntropyLoss", use_mask=True))
  assert np.isfinite(mask_ce(masks, target, jnp.asarray([0, 3])))


class _RetinaLikeHead:
  """The loss calls of mmdetection's ``AnchorHead.loss_by_feat_single``, verbatim."""

  def __init__(self, backend):
    self.loss_cls = _built(dict(type="mmdet.FocalLoss", use_sigmoid=True, gamma=2.0,
                                alpha=0.25, loss_weight=1.0), backend)
    self.loss_bbox = _built(dict(type="mmdet.L1Loss", loss_weight=1.0), backend)

  def loss_by_feat_single(self, cls_score, bbox_pred, labels, label_weights, bbox_targets,
                          bbox_weights, avg_factor):
    loss_cls = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg_factor)
    loss_bbox = self.loss_bbox(bbox_pred, bbox_targets, bbox_weights, avg_factor=avg_factor)
    return loss_cls, loss_bbox


@pytest.mark.parametrize("backend", ["function", "nnx", "linen"])
def test_an_mmdetection_head_runs_unchanged(rng, backend):
  cls_score = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  bbox_pred = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  labels = jnp.asarray([0, 3, 1, 3, 2, 3, 3, 0])
  label_weights = jnp.ones(8)
  bbox_targets = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  bbox_weights = jnp.asarray(np.repeat((labels < 3)[:, None], 4, 1), jnp.float32)
  head = _RetinaLikeHead(backend)
  loss_cls, loss_bbox = jax.jit(head.loss_by_feat_single)(
      cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights, 4.0)
  np.testing.assert_allclose(loss_cls, jaxloss.sigmoid_focal_loss(
      cls_score, labels, weight=label_weights, avg_factor=4.0), rtol=1e-6)
  np.testing.assert_allclose(loss_bbox, jnp.sum(
      bbox_weights * jnp.abs(bbox_pred - bbox_targets)) / 4.0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["ce", "weighted_ce", "focal", "dice", "focal_dice", "tversky"])
@pytest.mark.parametrize("backend", ["nnx", "linen"])
def test_quick_reference_types_build_for_flax(rng, kind, backend):
  logits = jnp.asarray(rng.normal(size=(2, 5, 5, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=(2, 5, 5)))
  config = dict(type=kind, num_classes=4)
  expected = jaxloss.build_loss(config)(logits, labels)
  np.testing.assert_allclose(_built(config, backend)(logits, labels), expected, rtol=1e-6)


def test_focal_dice_and_its_class_agree_on_num_classes(rng):
  logits = jnp.asarray(rng.normal(size=(1, 4, 4, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=(1, 4, 4)))
  np.testing.assert_allclose(jnnx.FocalDiceLoss(num_classes=3)(logits, labels),
                             jaxloss.build_loss(dict(type="focal_dice", num_classes=3))(
                                 logits, labels), rtol=1e-6)
  with pytest.raises(ValueError, match="num_classes=5 but the logits have 3 classes"):
    jaxloss.focal_dice_loss(logits, labels, num_classes=5)


def test_scoped_types_and_build_time_option_checks():
  assert jaxloss.build_loss(dict(type="mmdet.GIoULoss")).declaration.name == "GIoULoss"
  with pytest.raises(ValueError, match="only scope is 'mmdet'"):
    jaxloss.build_loss(dict(type="mmseg.FocalLoss"))
  for backend in ("function", "nnx", "linen"):
    with pytest.raises(ValueError, match="use_sigmoid=False is not supported"):
      jaxloss.build_loss(dict(type="FocalLoss", use_sigmoid=False), backend=backend)
  with pytest.raises(ValueError, match="use_sigmoid=False"):
    jnnx.QualityFocalLoss(use_sigmoid=False)
  with pytest.raises(ValueError, match="reduction must be one of"):
    jaxloss.build_loss(dict(type="L1Loss", reduction="avg"))


@pytest.mark.parametrize("key, value, match", [
    ("eps", "1e-6", "`eps` must be a number, got the string '1e-6'"),
    ("loss_weight", "2", "`loss_weight` must be a number"),
    ("mode", dict(a=1), "`mode` got a nested dict"),
    ("eps", dict(value=1e-6), "nested dict"),
])
def test_string_and_nested_config_values_fail_at_build(key, value, match):
  with pytest.raises(TypeError, match=match):
    jaxloss.build_loss({"type": "IoULoss", key: value})
  with pytest.raises(TypeError, match=match):
    jaxloss.build_loss({"type": "IoULoss", key: value}, backend="linen")


def test_bool_options_must_be_bools():
  with pytest.raises(TypeError, match="`use_mask` must be a bool"):
    jaxloss.build_loss(dict(type="CrossEntropyLoss", use_mask="false"))


@pytest.mark.parametrize("class_weight", [[1.0, 2.0, 0.5], np.array([1.0, 2.0, 0.5]),
                                          jnp.array([1.0, 2.0, 0.5])])
def test_linen_array_hyperparameters_hash_and_jit(rng, class_weight):
  logits = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 1, 0])
  # mmdetection's CrossEntropyLoss: "mean" over the elements, not over the class weights
  expected = jnp.mean(jaxloss.cross_entropy(logits, labels, class_weight=jnp.array([1.0, 2.0, 0.5]),
                                            reduction="none"))
  module = jlinen.CrossEntropyLoss(class_weight=class_weight)
  assert module.class_weight == (1.0, 2.0, 0.5)
  hash(module)

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x, y):
      return jlinen.CrossEntropyLoss(class_weight=class_weight)(x, y)

  np.testing.assert_allclose(nn.jit(Model)().apply({}, logits, labels), expected, rtol=1e-6)
  np.testing.assert_allclose(
      jax.jit(lambda x, y: module.apply({}, x, y))(logits, labels), expected, rtol=1e-6)
  np.testing.assert_allclose(
      jax.jit(lambda m, x, y: m.apply({}, x, y), static_argnums=0)(module, logits, labels),
      expected, rtol=1e-6)


def test_repr_shows_the_hyperparameters_that_differ():
  assert repr(jaxloss.build_loss(dict(type="L1Loss"))) == "L1Loss()"
  assert repr(jnnx.L1Loss(loss_weight=2.0)) == "L1Loss(loss_weight=2.0)"
  assert repr(jnnx.FocalLoss(gamma=1.0, reduction="sum")) == "FocalLoss(gamma=1.0, reduction='sum')"
  assert repr(jlinen.SmoothL1Loss(beta=0.5)) == "SmoothL1Loss(beta=0.5)"
