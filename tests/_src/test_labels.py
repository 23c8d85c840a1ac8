"""Canonical integer labels and check_labels (eager and under checkify)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxloss
from jaxloss._src.labels import canonical_labels, label_dtype


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16, jnp.int32, jnp.uint16])
def test_canonical_labels_compare_as_int32(dtype):
  labels = canonical_labels(jnp.array([0, 1, 100], dtype))
  assert labels.dtype == label_dtype()
  # In uint8, 300 wraps to 44: compared canonically, no label equals it.
  assert not jnp.any(labels == 300)
  assert label_dtype() == jnp.int32


def test_canonical_labels_rejects_float():
  with pytest.raises(TypeError, match=r"`gt_labels` must hold integer class labels.*astype"):
    canonical_labels(jnp.array([0.0, 1.0]), "gt_labels")


def test_check_labels_eager():
  jaxloss.check_labels(jnp.array([0, 2, 255], jnp.uint8), 3, ignore_index=255)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\); found 2 outside it, e.g. 3"):
    jaxloss.check_labels(np.array([0, 3, -1]), 3)
  # In int8, 200 would wrap to -56 and every label would be out of range.
  jaxloss.check_labels(jnp.array([-100, 5, 127], jnp.int8), 200, ignore_index=-100)
  with pytest.raises(ValueError, match=r"\[0, 200\) or -100; found 1 outside it, e.g. 250"):
    jaxloss.check_labels(jnp.array([-100, 250, 1], jnp.int16), 200, ignore_index=-100)


def test_check_labels_under_checkify_jit():
  def step(labels):
    jaxloss.check_labels(labels, 3, ignore_index=-1)
    return jnp.sum(labels)

  checked = jax.jit(checkify.checkify(step))
  err, _ = checked(jnp.array([0, 2, -1]))
  err.throw()
  err, _ = checked(jnp.array([0, 5, -1]))
  with pytest.raises(Exception, match=r"labels must be in \[0, 3\) or -1"):
    err.throw()


@pytest.mark.parametrize("num_classes,error",
                         [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_check_labels_num_classes(num_classes, error):
  with pytest.raises(error, match="num_classes"):
    jaxloss.check_labels(jnp.array([0]), num_classes)
