"""MONAI's options on the region losses: ``smooth_nr`` / ``smooth_dr`` and ``soft_label``.

References: MONAI 1.6.1's own values and gradients (``fixtures/monai/monai_soft.npz``, made by
``make_monai_soft.py``) and a float64 numpy transcription of MONAI's norm formula
:math:`I = (\\|p\\|_1 + \\|t\\|_1 - \\|p - t\\|_1) / 2`.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import segmentation as seg
from tests.utils import bf16, load_fixture, value_and_grad_finite

F = load_fixture("monai_soft.npz")
# one quick compilation per test (as test_segmentation.py)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# key: (loss, input, target, keywords); MONAI's batch=False is per_image=True.
CASES = {
    "dice_soft": (seg.dice_loss, "logits", "soft", dict(soft_label=True, smooth=1e-5)),
    "dice_soft_opts": (seg.dice_loss, "logits", "soft",
                       dict(soft_label=True, smooth_nr=0.0, smooth_dr=1e-3, per_image=False,
                            include_background=False, reduction="none")),
    "dice_plain_soft": (seg.dice_loss, "logits", "soft", dict(smooth_nr=0.5, smooth_dr=2.0)),
    "dice_soft_sq": (seg.dice_loss, "logits", "soft",
                     dict(soft_label=True, squared=True, smooth=1e-5)),
    "jac_soft": (seg.jaccard_loss, "logits", "soft",
                 dict(soft_label=True, smooth_nr=0.05, smooth_dr=0.1)),  # MONAI halves them
    "jac_int": (seg.jaccard_loss, "logits", "labels", dict(smooth_nr=0.05, smooth_dr=0.1)),
    "dice_soft_ties": (seg.dice_loss, "logitsb", "targetb",
                       dict(activation="sigmoid", soft_label=True, smooth=1e-5, reduction="sum")),
    "dice_soft_self": (seg.dice_loss, "probs", "probs",
                       dict(activation=None, soft_label=True, smooth=1e-5, reduction="none")),
    "dice_plain_self": (seg.dice_loss, "probs", "probs",
                        dict(activation=None, smooth=1e-5, reduction="none")),
    "dice_int": (seg.dice_loss, "logits", "labels",
                 dict(soft_label=True, smooth_nr=0.3, smooth_dr=1.0)),
    "tv_soft": (seg.tversky_loss, "logits", "soft",
                dict(soft_label=True, alpha=0.3, beta=0.7, smooth_nr=0.2, smooth_dr=0.5)),
    "tv_plain_soft": (seg.tversky_loss, "logits", "soft",
                      dict(alpha=0.7, beta=0.3, smooth=1e-5, per_image=False, reduction="none")),
    "tv_soft_ties": (seg.tversky_loss, "logitsb", "targetb",
                     dict(activation="sigmoid", soft_label=True, smooth_nr=0.0, smooth_dr=1e-3)),
    "tv_int": (seg.tversky_loss, "logits", "labels", dict(smooth_nr=0.0, smooth_dr=1.0)),
    "gdl_soft": (seg.generalized_dice_loss, "logits", "soft",
                 dict(soft_label=True, smooth_nr=1e-4, smooth_dr=1e-3, reduction="none")),
    "gdl_soft_batch": (seg.generalized_dice_loss, "logits", "soft",
                       dict(soft_label=True, weight_type="simple", per_image=False)),
    "gdl_plain_soft": (seg.generalized_dice_loss, "logits", "soft",
                       dict(weight_type="uniform", smooth_nr=0.5, smooth_dr=1.0)),
    "gdl_int": (seg.generalized_dice_loss, "logits", "labels", dict(smooth_nr=0.0, smooth_dr=1e-3)),
}


def _call(key, x):
  fn, _, target, kw = CASES[key]
  kw = dict(kw)
  kw.setdefault("per_image", True)
  y = F[target] if target == "labels" else jnp.asarray(F[target], jnp.float32)
  return fn(x, y, **kw)  # the *_self targets are constants, equal to x


def test_values_and_gradients_match_monai():
  """The sum of each output and its gradient w.r.t. the input (MONAI's numbers), all in one
  compilation."""
  inputs = {k: jnp.asarray(F[v[1]], jnp.float32) for k, v in CASES.items()}

  def run(xs):
    return {k: jax.value_and_grad(lambda x, k=k: jnp.sum(_call(k, x)))(xs[k]) for k in xs}

  got = jax.jit(run, compiler_options=FAST_COMPILE)(inputs)
  for key, (value, grad) in got.items():
    np.testing.assert_allclose(value, F[f"{key}_value"].sum(), rtol=2e-5, atol=1e-6,
                               err_msg=key)
    np.testing.assert_allclose(grad, F[f"{key}_grad"], rtol=1e-4, atol=2e-6, err_msg=key)
  # soft_label makes an exact prediction score 0 where the product form does not.
  assert np.all(F["dice_soft_self_value"] == 0) and np.all(F["dice_plain_self_value"] > 0.4)
  np.testing.assert_allclose(_call("dice_soft_self", inputs["dice_soft_self"]), 0.0, atol=1e-6)


def test_monai_dice_ce_jaccard_smoothing():
  """The DiceCELoss registry type passes MONAI's jaccard smoothing as MONAI does (doubled)."""
  x = jnp.asarray(F["logits"], jnp.float32)
  loss = jaxloss.build_loss(dict(type="DiceCELoss", softmax=True, to_onehot_y=True,
                                 jaccard=True, smooth_nr=0.1, smooth_dr=0.2, lambda_ce=0.0))
  value, grad = jax.value_and_grad(lambda a: loss(a, F["labels"]))(x)
  np.testing.assert_allclose(value, F["jac_int_value"], rtol=2e-5)
  np.testing.assert_allclose(grad, F["jac_int_grad"], rtol=1e-4, atol=2e-6)


# ----------------------------------------------------------------------------- numpy reference

def _np_loss(name, p, t, v, nr, dr, soft, alpha=0.3, beta=0.7):
  """float64 per-image loss from MONAI's formulas; pixels with ``v == 0`` removed."""
  p, t = p * v[..., None], t * v[..., None]
  pred, true = p.sum((1, 2)), t.sum((1, 2))
  if soft:
    inter = (np.abs(p).sum((1, 2)) + np.abs(t).sum((1, 2)) - np.abs(p - t).sum((1, 2))) / 2
  else:
    inter = (p * t).sum((1, 2))
  if name == "dice":
    return 1 - (2 * inter + nr) / (pred + true + dr)
  if name == "jaccard":
    return 1 - (inter + nr) / (pred + true - inter + dr)
  if name == "tversky":
    return 1 - (inter + nr) / (inter + alpha * (pred - inter) + beta * (true - inter) + dr)
  w = 1 / true**2
  return 1 - (2 * (w * inter).sum(-1) + nr) / ((w * (pred + true)).sum(-1) + dr)


FNS = {"dice": seg.dice_loss, "jaccard": seg.jaccard_loss, "tversky": seg.tversky_loss,
       "gdl": seg.generalized_dice_loss}


@pytest.mark.parametrize("soft", [True, False])
def test_numpy_reference_and_padding(soft):
  """float64 formula on the real pixels == jaxloss with a NaN-logit, garbage-target border
  masked by ``where``; the border gets zero gradients."""
  rng = np.random.default_rng(5)
  b, h, w, c, pad = 2, 4, 5, 3, 2
  x = rng.normal(0, 2, (b, h + pad, w, c))
  e = np.exp(rng.normal(0, 1.5, (b, h + pad, w, c)))
  t = e / e.sum(-1, keepdims=True)
  x[:, h:] = np.nan
  t[:, h:] = 7.0
  valid = np.zeros((b, h + pad, w), bool)
  valid[:, :h] = True
  ex = np.exp(x[:, :h] - x[:, :h].max(-1, keepdims=True))
  p = ex / ex.sum(-1, keepdims=True)
  nr, dr = 0.25, 0.75
  extra = {"tversky": dict(alpha=0.3, beta=0.7)}
  fns = {k: functools.partial(
      f, per_image=True, reduction="none", soft_label=soft, smooth_nr=nr, smooth_dr=dr,
      where=valid, **extra.get(k, {})) for k, f in FNS.items()}
  tt = jnp.asarray(t, jnp.float32)

  def run(xx):
    return {k: jax.value_and_grad(lambda a, f=f: jnp.sum(f(a, tt)))(xx) for k, f in fns.items()}

  got = jax.jit(run, compiler_options=FAST_COMPILE)(jnp.asarray(x, jnp.float32))
  ones = np.ones((b, h, w))
  for name, (value, grad) in got.items():
    expected = _np_loss(name, p, t[:, :h], ones, nr, dr, soft).sum()
    np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-6, err_msg=name)
    assert np.all(np.isfinite(grad[:, :h])) and np.all(grad[:, h:] == 0), name
    assert np.any(grad[:, :h] != 0), name


def test_ignore_index_with_separate_smoothing():
  """Integer labels: ignored pixels change nothing; soft_label is a no-op there."""
  rng = np.random.default_rng(6)
  x = rng.normal(0, 2, (2, 4, 3, 3)).astype(np.float32)
  y = rng.integers(0, 3, (2, 4, 3))
  padded_x = np.concatenate([x, np.full_like(x[:, :1], np.nan)], axis=1)
  padded_y = np.concatenate([y, np.full_like(y[:, :1], 255)], axis=1)
  for fn in FNS.values():
    kw = dict(smooth_nr=0.0, smooth_dr=0.5, per_image=True)
    ref, g_ref = jax.value_and_grad(lambda a, fn=fn, kw=kw: fn(a, y, **kw))(x)
    soft, g_soft = jax.value_and_grad(lambda a, fn=fn, kw=kw: fn(
        a, padded_y, ignore_index=255, soft_label=True, **kw))(padded_x)
    np.testing.assert_allclose(soft, ref, rtol=1e-6)
    np.testing.assert_allclose(g_soft[:, :4], g_ref, rtol=1e-5, atol=1e-7)
    assert np.all(g_soft[:, 4:] == 0)


# ----------------------------------------------------------------------------- contract

def test_defaults_errors_and_hostile_inputs():
  x = jnp.asarray(F["logits"], jnp.float32)
  t = jnp.asarray(F["soft"], jnp.float32)
  for fn in FNS.values():
    # smooth_nr / smooth_dr default to smooth
    np.testing.assert_allclose(fn(x, t, smooth=0.3), fn(x, t, smooth=5.0, smooth_nr=0.3,
                                                         smooth_dr=0.3), rtol=1e-6)
    assert fn(bf16(x), bf16(t), soft_label=True).dtype == jnp.float32
    with pytest.raises(ValueError, match="smooth_dr > 0"):
      fn(x, t, smooth_nr=1e-5, smooth_dr=0.0)
    with pytest.raises(ValueError, match="smooth_dr > 0"):
      fn(x, t, smooth=1.0, smooth_dr=0.0)
    with pytest.raises(ValueError, match="smooth_nr"):
      fn(x, t, smooth_nr=-1.0)
    with pytest.raises(TypeError, match="soft_label"):
      jax.jit(lambda s, fn=fn: fn(x, t, soft_label=s))(True)
    with jax.debug_nans(True):
      value_and_grad_finite(lambda a, fn=fn: fn(a, t, soft_label=True, smooth=0.0), x * 1e4)
      value_and_grad_finite(lambda a, fn=fn: fn(a, t, soft_label=True, smooth=0.0,
                                                where=jnp.zeros(t.shape[:-1], bool)), x)


def test_registry_and_wrappers_take_the_options():
  x = jnp.asarray(F["logits"], jnp.float32)
  t = jnp.asarray(F["soft"], jnp.float32)
  cfg: dict[str, Any] = dict(smooth_nr=0.0, smooth_dr=1e-3, soft_label=True, per_image=True)
  expected = seg.dice_loss(x, t, **cfg)
  np.testing.assert_allclose(jaxloss.build_loss(dict(type="DiceLoss", **cfg))(x, t), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(jaxloss.nnx.DiceLoss(**cfg)(x, t), expected, rtol=1e-6)
