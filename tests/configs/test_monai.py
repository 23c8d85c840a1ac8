"""Registry types DiceCELoss / DiceFocalLoss against MONAI 1.6.1's own numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss.configs import monai as monai_losses
from tests.utils import bf16, load_fixture, value_and_grad_finite

F = load_fixture("monai_compound.npz")
W = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
SM = dict(softmax=True, to_onehot_y=True)
CASES = [
    ("dce", "DiceCELoss", False, dict(SM)),
    ("dce_opts", "DiceCELoss", False,
     dict(SM, include_background=False, smooth_nr=0.0, smooth_dr=1e-3, batch=True,
          lambda_dice=0.7, lambda_ce=0.4, class_weight=W)),
    ("dce_jac_sq_sum", "DiceCELoss", False,
     dict(SM, jaccard=True, squared_pred=True, reduction="sum", label_smoothing=0.1)),
    ("dce_bin", "DiceCELoss", True, dict(sigmoid=True)),
    ("dfo", "DiceFocalLoss", False, dict(SM)),
    ("dfo_opts", "DiceFocalLoss", False,
     dict(SM, include_background=False, gamma=1.5, alpha=0.25, lambda_dice=0.3,
          lambda_focal=2.0, smooth_nr=1.0, smooth_dr=0.5, class_weight=W[1:])),
    ("dfo_sig_batch", "DiceFocalLoss", False,
     dict(sigmoid=True, to_onehot_y=True, batch=True, reduction="sum")),
]


@pytest.mark.parametrize("key,name,binary,kw", CASES, ids=[c[0] for c in CASES])
def test_registry_types_give_monai_numbers(key, name, binary, kw):
  x = jnp.asarray(F["logitsb" if binary else "logits"], jnp.float32)
  y = jnp.asarray(F["targetb" if binary else "labels"])
  kw = dict(kw)
  reduction = kw.pop("reduction", "mean")
  loss = jaxloss.build_loss(dict(type=name, reduction=reduction, **kw))
  np.testing.assert_allclose(loss(x, y), F[f"{key}_value"], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda a: loss(a, y))(x), F[f"{key}_grad"],
                             rtol=1e-4, atol=1e-6)


def test_hostile_inputs_and_errors():
  x = jnp.asarray(F["logits"], jnp.float32)
  y = jnp.asarray(F["labels"], jnp.uint8)
  for fn in (monai_losses.monai_dice_ce_loss, monai_losses.monai_dice_focal_loss):
    with jax.debug_nans(True):
      value_and_grad_finite(lambda a, fn=fn: fn(a, y, softmax=True), x * 1e4)
      value_and_grad_finite(lambda a, fn=fn: fn(a, y, softmax=True, smooth_nr=0.0,
                                                smooth_dr=0.0, where=jnp.zeros(y.shape, bool)),
                            x)
    assert fn(bf16(x), y, softmax=True).dtype == jnp.float32
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
      fn(x, y, reduction="none")
    with pytest.raises(ValueError, match="sigmoid"):
      fn(x, y, sigmoid=True, softmax=True)
  with pytest.raises(ValueError, match="lambda_ce"):
    monai_losses.monai_dice_ce_loss(x, y, lambda_ce=-1.0)
