"""User errors of the classification losses: one exception class per mistake (a wrong dtype
is a ``TypeError``, a wrong shape or value a ``ValueError``), raised by jaxloss at trace time
with a message naming the argument, the shapes and the fix (issue #14 items 8-10)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss.classification.quality import summed_quality_focal_loss

LOGITS = np.zeros((4, 3), np.float32)
LABELS = np.array([0, 2, 1, 3], np.int32)
SCORES = np.full(4, 0.5, np.float32)

# every classification loss that reads class labels [...] from logits [..., C]
LABEL_LOSSES = {
    "binary_cross_entropy": jaxloss.binary_cross_entropy,
    "sigmoid_focal_loss": jaxloss.sigmoid_focal_loss,
    "cross_entropy": jaxloss.cross_entropy,
    "softmax_focal_loss": jaxloss.softmax_focal_loss,
    "quality_focal_loss": lambda x, y, **kw: jaxloss.quality_focal_loss(x, y, SCORES, **kw),
    "summed_quality_focal_loss":
        lambda x, y, **kw: summed_quality_focal_loss(x, y, SCORES, **kw),
}


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_float_class_indices_are_a_type_error_everywhere(name):
  # the same mistake (class indices in a float array) was ValueError in cross_entropy and
  # the sigmoid losses but TypeError in softmax_focal_loss / quality_focal_loss
  with pytest.raises(TypeError, match=r"shape \(4,\) for logits \(4, 3\) has float dtype "
                                      r"float32.*`\.astype\(jnp\.int32\)`"):
    LABEL_LOSSES[name](LOGITS, LABELS.astype(np.float32))
  LABEL_LOSSES[name](LOGITS, LABELS)  # the integer labels are fine


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_labels_of_another_batch_are_a_value_error_everywhere(name):
  with pytest.raises(ValueError, match=r"\(8,\)") as info:
    LABEL_LOSSES[name](LOGITS, np.zeros(8, np.int32))
  assert "(4,)" in str(info.value)  # the expected shape is named too


@pytest.mark.parametrize("name", ["binary_cross_entropy", "sigmoid_focal_loss"])
def test_sigmoid_targets_of_another_shape(name):
  with pytest.raises(ValueError, match=r"float targets of shape \(8, 3\) for logits \(4, 3\)"):
    LABEL_LOSSES[name](LOGITS, np.zeros((8, 3), np.float32))


def test_pos_weight_of_the_wrong_shape():
  targets = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match=r"`pos_weight` of shape \(5,\) does not broadcast to the "
                                       r"logits' shape \(4, 3\).*shape \(3,\), or a scalar"):
    jaxloss.binary_cross_entropy(LOGITS, targets, pos_weight=np.ones(5, np.float32))
  for ok in (np.ones(3, np.float32), 2.0, np.ones((4, 3), np.float32)):
    jaxloss.binary_cross_entropy(LOGITS, targets, pos_weight=ok)


def test_probabilities_of_another_batch():
  with pytest.raises(ValueError, match=r"`logits` \(4, 3\), `labels` \(8, 3\).*leading shape"):
    jaxloss.cross_entropy(LOGITS, np.full((8, 3), 1 / 3, np.float32))
  with pytest.raises(ValueError, match=r"`class_weight` must have one entry per class, shape "
                                       r"\(3,\), got shape \(5,\)"):
    jaxloss.cross_entropy(LOGITS, np.full((4, 3), 1 / 3, np.float32),
                          class_weight=np.ones(5, np.float32))


@pytest.mark.parametrize("fn", [jaxloss.quality_focal_loss, summed_quality_focal_loss])
def test_quality_scores_of_the_wrong_shape(fn):
  for scores in (np.zeros(8, np.float32), np.zeros((4, 3), np.float32)):
    with pytest.raises(ValueError, match=r"`scores` of shape \(\d, ?\d?\) does not broadcast "
                                         r"to the labels' shape \(4,\)"):
      fn(LOGITS, LABELS, scores)


def test_gaussian_heatmap_of_another_shape():
  with pytest.raises(ValueError, match=r"`probs` \(4, 3\), `heatmap` \(8, 3\)"):
    jaxloss.gaussian_focal_loss(np.full((4, 3), 0.5, np.float32), np.zeros((8, 3), np.float32))


STRING_WEIGHT_LOSSES = {
    "cross_entropy": (jaxloss.cross_entropy, "class_weight"),
    "softmax_focal_loss": (jaxloss.softmax_focal_loss, "alpha"),
    "dice_loss": (jaxloss.dice_loss, "class_weight"),
    "jaccard_loss": (jaxloss.jaccard_loss, "class_weight"),
    "tversky_loss": (jaxloss.tversky_loss, "class_weight"),
    "combined_segmentation_loss": (jaxloss.combined_segmentation_loss, "class_weight"),
    "focal_dice_loss": (jaxloss.focal_dice_loss, "class_weight"),
}


@pytest.mark.parametrize("name", STRING_WEIGHT_LOSSES)
def test_a_method_name_as_class_weight_names_class_weights(name):
  fn, key = STRING_WEIGHT_LOSSES[name]
  logits, labels = np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4), np.int32)
  with pytest.raises(TypeError, match=rf"`{key}` must be an array, got the string 'median'.*"
                                      rf"`{key}=jaxloss\.class_weights\(labels, num_classes, "
                                      r"method=\.\.\.\)`"):
    fn(logits, labels, **{key: "median"})
  # the fix the message names works
  fn(logits, labels, **{key: jaxloss.class_weights(labels, 3, method="median")})


def test_checks_run_at_trace_time():
  # the shapes are static: the same errors come from inside jit
  with pytest.raises(TypeError, match="float dtype"):
    jax.jit(jaxloss.softmax_focal_loss)(LOGITS, jnp.asarray(LABELS, jnp.float32))
  with pytest.raises(ValueError, match="`pos_weight`"):
    jax.jit(functools.partial(jaxloss.binary_cross_entropy, pos_weight=jnp.ones(5)))(
        LOGITS, np.zeros((4, 3), np.float32))
