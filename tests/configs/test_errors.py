"""Configuration errors that name the fix (issue #14 items 9-10): a method's name given as
``class_weight`` to a built or wrapped loss, and choices checked by the one ``check_choice``."""

import numpy as np
import pytest

import jaxloss

LOGITS = np.zeros((4, 3), np.float32)
LABELS = np.array([0, 2, 1, 1], np.int32)


@pytest.mark.parametrize("make", [
    lambda: jaxloss.build_loss(dict(type="CrossEntropyLoss", class_weight="median")),
    lambda: jaxloss.nnx.CrossEntropyLoss(class_weight="median"),
    lambda: jaxloss.build_loss(dict(type="DiceLoss", class_weight="inverse")),
])
def test_a_method_name_as_class_weight_names_class_weights(make):
  with pytest.raises(TypeError, match=r"`class_weight` does not take a string, got "
                                      r"'(median|inverse)'.*`class_weight=jaxloss\.class_weights"
                                      r"\(labels, num_classes, method=\.\.\.\)`"):
    make()(LOGITS, LABELS)
  weights = jaxloss.class_weights(LABELS, 3, method="median")  # the fix it names
  jaxloss.build_loss(dict(type="CrossEntropyLoss", class_weight=weights))(LOGITS, LABELS)


def test_backend_choice():
  with pytest.raises(ValueError, match=r"backend must be one of \(.*'nnx'.*\), got 'torch'"):
    jaxloss.build_loss(dict(type="L1Loss"), backend="torch")
