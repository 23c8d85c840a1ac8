"""class_weights against numpy references written from the definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss.segmentation.weights import class_weights
from tests.utils import jit_counting

NUM = 5
IGN = 255


def _labels(seed=0):
  """80/10/7/3 split over classes 0..3; class 4 absent; 5% ignored."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(4, size=(4, 16, 16), p=[0.8, 0.1, 0.07, 0.03])
  return np.where(rng.uniform(size=labels.shape) < 0.05, IGN, labels)


def np_class_weights(labels, num, method, beta=0.999, ignore=None):
  lab = labels.reshape(-1)
  lab = lab[(lab >= 0) & (lab < num) & (lab != ignore if ignore is not None else True)]
  counts = np.array([(lab == c).sum() for c in range(num)], float)
  present = counts > 0
  n = counts[present]
  if method == "inverse":
    w = 1 / n
  elif method == "inverse_sqrt":
    w = 1 / np.sqrt(n)
  elif method == "effective":
    w = (1 - beta) / (1 - beta ** n)
  else:
    w = np.median(n) / n
  if method != "median":
    w = w / w.mean()
  out = np.full(num, w.max())
  out[present] = w
  return out


@pytest.mark.parametrize("method", ["inverse", "inverse_sqrt", "median", "effective"])
def test_matches_numpy(method):
  labels = _labels()
  got = jax.jit(lambda y: class_weights(y, NUM, method=method, ignore_index=IGN))(labels)
  np.testing.assert_allclose(got, np_class_weights(labels, NUM, method, ignore=IGN), rtol=1e-5)


def test_properties_and_rare_classes_weigh_more():
  labels = _labels(1)
  three = np.repeat(np.array([0, 1, 2]), [50, 20, 5])
  got = jax.jit(lambda y, t: (
      class_weights(y, NUM, ignore_index=IGN),
      class_weights(t, 4, method="median"),
      class_weights(y, NUM, method="effective", beta=0.0, ignore_index=IGN)))(labels, three)
  w, median, uniform = map(np.asarray, got)
  np.testing.assert_allclose(w[:4].mean(), 1.0, rtol=1e-6)  # mean 1 over present classes
  assert w[0] < w[1] < w[2] < w[3] and w[4] == w[3]          # absent class: largest weight
  np.testing.assert_allclose(median, [0.4, 1.0, 4.0, 4.0], rtol=1e-6)  # median class weighs 1
  np.testing.assert_allclose(uniform, np.ones(NUM), rtol=1e-6)  # beta=0: effective numbers 1


def test_ignored_and_out_of_range_labels_are_not_counted():
  labels = _labels(2)
  other = np.where(labels == IGN, -1, labels)
  got = jax.jit(lambda y, o: (
      class_weights(y, NUM, ignore_index=IGN), class_weights(o, NUM, ignore_index=-1),
      class_weights(y, NUM), class_weights(o, NUM),
      class_weights(jnp.full((3, 3), IGN), NUM, ignore_index=IGN)))(labels, other)
  np.testing.assert_allclose(got[0], got[1], rtol=1e-6)
  np.testing.assert_allclose(got[0], got[2], rtol=1e-6)
  np.testing.assert_allclose(got[0], got[3], rtol=1e-6)
  np.testing.assert_allclose(got[4], np.ones(NUM))


def test_jittable_without_retrace_and_errors():
  fn, counter = jit_counting(lambda y: class_weights(y, NUM, method="median", ignore_index=IGN))
  for seed in range(3):
    assert np.all(np.isfinite(fn(_labels(seed))))
  assert np.all(np.isfinite(fn(np.full((4, 16, 16), IGN))))
  assert counter.count == 1
  with pytest.raises(ValueError, match="method"):
    class_weights(_labels(), NUM, method="log")
  with pytest.raises(ValueError, match="beta"):
    class_weights(_labels(), NUM, method="effective", beta=1.0)
  assert jaxloss.class_weights is class_weights


def test_argument_errors_name_the_fix():
  labels = np.array([0, 1, 1, 2], np.int32)
  # float labels: a wrong type; the fix is the integer cast
  with pytest.raises(TypeError, match=r"`labels` must hold integer class labels, got dtype "
                                      r"float32; cast class indices with `\.astype\(jnp\.int32\)`"):
    class_weights(labels.astype(np.float32), 3)
  # num_classes: a positive Python int (it is the static length of the weights)
  with pytest.raises(ValueError, match=r"`num_classes` must be >= 1, got 0"):
    class_weights(labels, 0)
  with pytest.raises(TypeError, match=r"`num_classes` must be a Python int \(it sets static "
                                      r"shapes\), got float 3\.0"):
    class_weights(labels, 3.0)
  with pytest.raises(ValueError, match=r"`num_classes` must be >= 1, got 0"):
    jaxloss.check_labels(labels, 0)  # the same check
  # choices and ranges through the shared checks
  with pytest.raises(ValueError, match=r"method must be one of \('inverse', 'inverse_sqrt', "
                                       r"'median', 'effective'\), got 'log'"):
    class_weights(labels, 3, method="log")
  with pytest.raises(ValueError, match=r"`beta` must be in \[0, 1\), got 1\.0"):
    class_weights(labels, 3, method="effective", beta=1.0)


@pytest.mark.parametrize("name", ["combined_segmentation_loss", "focal_dice_loss"])
def test_scalar_losses_reduction_choice(name):
  logits, labels = np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 4, 4), np.int32)
  with pytest.raises(ValueError, match=rf"reduction must be one of \('mean', 'sum'\), got "
                                       rf"'none'\. {name} returns a scalar"):
    getattr(jaxloss, name)(logits, labels, reduction="none")
