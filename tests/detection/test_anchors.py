"""anchor_grid and the delta_xywh box coder: mmdetection 3.3 AnchorGenerator and
DeltaXYWHBBoxCoder numbers (tests/fixtures/mmdet/mmdet_anchor.npz, values and decode
gradients), a float64 numpy reference of the R-CNN formulas, hand cases, hostile inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests.utils import assert_finite, load_fixture

SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


@pytest.fixture(scope="module")
def fx():
  return load_fixture("mmdet_anchor.npz")


@pytest.mark.parametrize("name,kwargs", [
    ("retina", {}),
    ("gfl", dict(octave_base_scale=8, scales_per_octave=1, ratios=(1.0,))),
])
def test_anchor_grid_matches_mmdet_index_for_index(fx, name, kwargs):
  got = jaxloss.anchor_grid(SIZES, (8, 16, 32, 64, 128), **kwargs)
  np.testing.assert_allclose(got, fx[f"anchors_{name}"], rtol=1e-6, atol=1e-5)
  assert got.dtype == jnp.float32


def test_anchor_grid_offset_nonsquare_nhwc_shapes(fx):
  shapes = [(2, 3, 5, 7), (2, 2, 3, 7)]  # NHWC shapes of non-square maps
  got = jaxloss.anchor_grid(shapes, (8, 16), octave_base_scale=2, scales_per_octave=2,
                            ratios=(0.5, 2.0), center_offset=0.5)
  np.testing.assert_allclose(got, fx["anchors_offset"], rtol=1e-6, atol=1e-5)


def test_anchor_grid_hand_case():
  # one 1x2 level, stride 10, one scale 2, ratio 4 (h/w): w = 10 * 2 / 2, h = 10 * 2 * 2
  got = jaxloss.anchor_grid([(1, 2)], (10,), octave_base_scale=2, scales_per_octave=1,
                            ratios=(4.0,))
  np.testing.assert_allclose(got, [[-5, -20, 5, 20], [5, -20, 15, 20]])


def test_anchor_grid_errors():
  with pytest.raises(ValueError, match="one stride per pyramid level"):
    jaxloss.anchor_grid([(4, 4)], (8, 16))
  with pytest.raises(ValueError, match="scales_per_octave"):
    jaxloss.anchor_grid([(4, 4)], (8,), scales_per_octave=0)
  with pytest.raises(ValueError, match="feature shape"):
    jaxloss.anchor_grid([(4, 4, 4)], (8,))


def _encode_ref(a, g, means, stds):
  """float64 numpy bbox2delta."""
  pw, ph = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
  px, py = a[:, 0] + pw / 2, a[:, 1] + ph / 2
  gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  gx, gy = g[:, 0] + gw / 2, g[:, 1] + gh / 2
  d = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], 1)
  return (d - np.asarray(means)) / np.asarray(stds)


CODERS = {
    "plain": {},
    "stats": dict(means=(0.1, -0.1, 0.05, 0.0), stds=(0.1, 0.1, 0.2, 0.2)),
    "clamp": dict(means=(0.1, -0.1, 0.05, 0.0), stds=(0.1, 0.1, 0.2, 0.2),
                  add_ctr_clamp=True, ctr_clamp=16),
    "ratio": dict(wh_ratio_clip=0.1),
}


@pytest.mark.parametrize("name", list(CODERS))
def test_encode_matches_mmdet_and_numpy(fx, name):
  kw = {k: v for k, v in CODERS[name].items() if k in ("means", "stds")}
  a, g = fx["coder_anchors"], fx["coder_boxes"]
  got = jaxloss.delta_xywh_encode(a.astype(np.float32), g.astype(np.float32), **kw)
  np.testing.assert_allclose(got, fx[f"coder_{name}__encoded"], rtol=2e-5, atol=2e-5)
  ref = _encode_ref(a, g, kw.get("means", (0,) * 4), kw.get("stds", (1,) * 4))
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", list(CODERS))
def test_decode_values_and_gradients_match_mmdet(fx, name):
  a, d, cot = (fx[k].astype(np.float32) for k in ("coder_anchors", "coder_deltas", "coder_cot"))
  decode = lambda d: jaxloss.delta_xywh_decode(a, d, **CODERS[name])
  np.testing.assert_allclose(decode(d), fx[f"coder_{name}__decoded"], rtol=1e-5, atol=1e-3)
  grad = jax.grad(lambda d: jnp.sum(decode(d) * cot))(d)
  np.testing.assert_allclose(grad, fx[f"coder_{name}__decode_grad"], rtol=1e-5, atol=1e-3)


def test_decode_max_shape_clips_to_the_image(fx):
  a, d = fx["coder_anchors"], fx["coder_deltas"]
  got = jaxloss.delta_xywh_decode(a.astype(np.float32), d.astype(np.float32),
                                  max_shape=(90, 110), **CODERS["stats"])
  np.testing.assert_allclose(got, fx["coder_stats__decoded_clip"], rtol=1e-5, atol=1e-3)


def test_decode_inverts_encode():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 50, (16, 2))
  a = np.concatenate([xy, xy + rng.uniform(5, 30, (16, 2))], 1).astype(np.float32)
  g = np.concatenate([xy + 2, xy + rng.uniform(5, 30, (16, 2))], 1).astype(np.float32)
  kw = CODERS["stats"]
  back = jaxloss.delta_xywh_decode(a, jaxloss.delta_xywh_encode(a, g, **kw), **kw)
  np.testing.assert_allclose(back, g, rtol=1e-5, atol=1e-4)


def test_coder_hostile_inputs_finite_and_bf16():
  a = jnp.array([[0.0, 0.0, 0.0, 0.0], [5, 5, 1, 1], [0, 0, 10, 10]])  # zero-size, inverted
  g = jnp.array([[0.0, 0.0, 0.0, 0.0], [1, 1, 2, 2], [3, 3, 3, 3]])
  enc = jaxloss.delta_xywh_encode(a, g)
  assert_finite(enc)
  dec, grad = jax.value_and_grad(lambda d: jnp.sum(jaxloss.delta_xywh_decode(a, d)))(
      jnp.full((3, 4), 1e4))
  assert_finite((dec, grad))
  assert jaxloss.delta_xywh_decode(a.astype(jnp.bfloat16), g.astype(jnp.bfloat16)).dtype == (
      jnp.float32)


def test_coder_errors():
  with pytest.raises(ValueError, match="means and stds must have 4 values"):
    jaxloss.delta_xywh_encode(jnp.ones((2, 4)), jnp.ones((2, 4)), means=(0, 0))
  with pytest.raises(ValueError, match="wh_ratio_clip"):
    jaxloss.delta_xywh_decode(jnp.ones((2, 4)), jnp.ones((2, 4)), wh_ratio_clip=0)
  with pytest.raises(ValueError, match="last axis of size 4"):
    jaxloss.delta_xywh_decode(jnp.ones((2, 4)), jnp.ones((2, 3)))
