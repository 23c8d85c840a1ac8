"""IoU-family losses against the papers' formulas, torchvision and mmdetection numbers,
and hostile boxes (degenerate, inverted, identical, huge, padded, NaN under where)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxloss
from tests.utils import assert_finite, bf16, load_fixture

TV = load_fixture("torchvision_boxes.npz")
MM = load_fixture("mmdet_losses.npz")
RNG = np.random.default_rng(11)

N = 48  # every test runs on [48, 4] boxes so that each loss compiles once

LOSSES = {
    "iou_log": (jaxloss.iou_loss, {}),
    "iou_linear": (jaxloss.iou_loss, {"mode": "linear"}),
    "iou_square": (jaxloss.iou_loss, {"mode": "square"}),
    "giou": (jaxloss.giou_loss, {}),
    "diou": (jaxloss.diou_loss, {}),
    "ciou": (jaxloss.ciou_loss, {}),
    "eiou": (jaxloss.eiou_loss, {}),
    "eiou_smooth": (jaxloss.eiou_loss, {"smooth_point": 0.1, "eps": 1e-6}),
    "siou": (jaxloss.siou_loss, {"eps": 1e-6}),
    "siou_neg": (jaxloss.siou_loss, {"neg_gamma": True, "eps": 1e-6}),
}


@functools.cache
def _compiled(name):
  fn, kw = LOSSES[name]

  def total(p, t, where):
    per = fn(p, t, where=where, reduction="none", **kw)
    return per.sum(), per

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))


def run(name, pred, target, where=None):
  """Per-box loss and the gradients of its sum w.r.t. pred and target (one compile per loss)."""
  where = np.ones(pred.shape[:-1], bool) if where is None else where
  (_, per), (gp, gt) = _compiled(name)(pred, target, where)
  return np.asarray(per), np.asarray(gp), np.asarray(gt)


def _pairs(n, rng=RNG):
  """Valid boxes and partially overlapping (some disjoint) targets, float32."""
  xy = rng.uniform(0, 80, (n, 2))
  wh = rng.uniform(2, 40, (n, 2))
  shift = rng.uniform(-0.9, 0.9, (n, 2)) * wh
  twh = wh * rng.uniform(0.5, 1.8, (n, 2))
  pred = np.concatenate([xy, xy + wh], -1)
  target = np.concatenate([xy + shift, xy + shift + twh], -1)
  return pred.astype(np.float32), target.astype(np.float32)


PRED, TARGET = _pairs(N)


# ---------------------------------------------------------------- numpy references
def _parts(p, t):
  p, t = p.astype(np.float64), t.astype(np.float64)
  w, h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  wg, hg = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
  iw = np.clip(np.minimum(p[:, 2], t[:, 2]) - np.maximum(p[:, 0], t[:, 0]), 0, None)
  ih = np.clip(np.minimum(p[:, 3], t[:, 3]) - np.maximum(p[:, 1], t[:, 1]), 0, None)
  inter = iw * ih
  union = w * h + wg * hg - inter
  cw = np.maximum(p[:, 2], t[:, 2]) - np.minimum(p[:, 0], t[:, 0])
  ch = np.maximum(p[:, 3], t[:, 3]) - np.minimum(p[:, 1], t[:, 1])
  dx = (t[:, 0] + t[:, 2] - p[:, 0] - p[:, 2]) / 2
  dy = (t[:, 1] + t[:, 3] - p[:, 1] - p[:, 3]) / 2
  return dict(w=w, h=h, wg=wg, hg=hg, inter=inter, union=union, iou=inter / union, cw=cw,
              ch=ch, dx=dx, dy=dy)


def np_giou(p, t):  # Rezatofighi et al. 2019, eq. (1)
  d = _parts(p, t)
  area_c = d["cw"] * d["ch"]
  return 1 - d["iou"] + (area_c - d["union"]) / area_c


def np_diou(p, t):  # Zheng et al. 2020, eq. (6)
  d = _parts(p, t)
  return 1 - d["iou"] + (d["dx"] ** 2 + d["dy"] ** 2) / (d["cw"] ** 2 + d["ch"] ** 2)


def np_ciou(p, t):  # Zheng et al. 2020, eqs. (9)-(11)
  d = _parts(p, t)
  v = 4 / math.pi**2 * (np.arctan(d["wg"] / d["hg"]) - np.arctan(d["w"] / d["h"])) ** 2
  return np_diou(p, t) + v / (1 - d["iou"] + v) * v


def np_eiou(p, t):  # Zhang et al. 2022, eq. (11)
  d = _parts(p, t)
  return (np_diou(p, t) + (d["w"] - d["wg"]) ** 2 / d["cw"] ** 2
          + (d["h"] - d["hg"]) ** 2 / d["ch"] ** 2)


def np_siou(p, t):  # Gevorgyan 2022, eqs. (1)-(10), theta = 4
  d = _parts(p, t)
  alpha = np.arcsin(np.abs(d["dy"]) / np.hypot(d["dx"], d["dy"]))
  lam = 1 - 2 * np.sin(alpha - math.pi / 4) ** 2
  gamma = 2 - lam
  delta = sum(1 - np.exp(-gamma * (d[a] / d[c]) ** 2) for a, c in (("dx", "cw"), ("dy", "ch")))
  omega = sum((1 - np.exp(-np.abs(d[a] - d[b]) / np.maximum(d[a], d[b]))) ** 4
              for a, b in (("w", "wg"), ("h", "hg")))
  return 1 - np.clip(d["iou"] - (delta + omega) / 2, -1, 1)


PAPER = {"giou": np_giou, "diou": np_diou, "ciou": np_ciou, "eiou": np_eiou, "siou_neg": np_siou}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_against_paper_formula(name):
  per, _, _ = run(name, PRED, TARGET)
  np.testing.assert_allclose(per, PAPER[name](PRED, TARGET), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- library numbers
@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_torchvision_values_and_gradients(name):
  per, grad, _ = run(name, TV["pred"].astype(np.float32), TV["target"].astype(np.float32))
  np.testing.assert_allclose(per, TV[f"{name}_loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, TV[f"{name}_grad"], rtol=1e-3, atol=1e-4)


def _mmdet_padded():
  """mmdet's 40 pairs padded to N with masked NaN rows."""
  pad = np.full((N - 40, 4), np.nan, np.float32)
  pred = np.concatenate([MM["box_pred"], pad])
  target = np.concatenate([MM["box_target"], pad])
  return pred, target, np.arange(N) < 40


MMDET = {"iou_linear": "iou_linear", "iou_square": "iou_square", "iou_log": "iou_log",
         "giou": "giou", "diou": "diou", "eiou": "eiou_smooth", "siou": "siou",
         "siou_neggamma": "siou_neg"}


@pytest.mark.parametrize("key", sorted(MMDET))
def test_mmdetection_values_and_gradients(key):
  pred, target, where = _mmdet_padded()
  per, grad, _ = run(MMDET[key], pred, target, where)
  # giou/diou use torchvision's eps placement (eps=1e-7): a difference of order eps here
  np.testing.assert_allclose(per[:40], MM[f"{key}_none"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per[:40].mean(), MM[f"{key}_mean"], rtol=1e-5)
  # min/max ties: torchvision's masked intersection (ours) and mmdet's clamp differ there
  ties = MM["box_tie_mask"]
  np.testing.assert_allclose(grad[:40][~ties], MM[f"{key}_grad_sum"][~ties], rtol=1e-3,
                             atol=1e-4)
  np.testing.assert_array_equal(grad[40:], 0.0)


def test_ciou_agrees_with_mmdetection_where_its_alpha_is_kept():
  pred, target, where = _mmdet_padded()
  per, _, _ = run("ciou", pred, target, where)
  iou = np.asarray(jaxloss.box_iou(MM["box_pred"], MM["box_target"]))
  keep = iou > 0.5  # mmdetection 3 drops alpha * v at IoU <= 0.5; torchvision (ours) never
  assert keep.sum() >= 3
  np.testing.assert_allclose(per[:40][keep], MM["ciou_none"][keep], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- hostile boxes
def _box(x1, y1, x2, y2):
  return [x1, y1, x2, y2]


HOSTILE = {
    "zero_area": ([_box(3, 3, 3, 3), _box(0, 0, 5, 0), _box(0, 0, 0, 0), _box(2, 2, 2, 9)],
                  [_box(3, 3, 3, 3), _box(0, 0, 5, 5), _box(0, 0, 0, 0), _box(1, 1, 4, 4)]),
    "inverted": ([_box(5, 5, 0, 0), _box(0, 5, 5, 0), _box(10, 0, 0, 10), _box(4, 4, 1, 1)],
                 [_box(0, 0, 5, 5), _box(0, 0, 5, 5), _box(10, 0, 0, 10), _box(4, 4, 1, 1)]),
    "identical": ([_box(1, 2, 3, 4), _box(0, 0, 1e-3, 1e-3), _box(5, 5, 5, 5), _box(0, 0, 9, 1)],
                  [_box(1, 2, 3, 4), _box(0, 0, 1e-3, 1e-3), _box(5, 5, 5, 5), _box(0, 0, 9, 1)]),
    "nested": ([_box(2, 2, 4, 4), _box(0, 0, 10, 10), _box(3, 3, 7, 7), _box(0, 0, 10, 10)],
               [_box(0, 0, 10, 10), _box(2, 2, 4, 4), _box(0, 0, 10, 10), _box(5, 5, 5, 5)]),
    "far_apart": ([_box(0, 0, 1, 1), _box(0, 0, 1, 1), _box(0, 0, 1e-4, 1e-4), _box(0, 0, 2, 1)],
                  [_box(1e4, 1e4, 1e4 + 1, 1e4 + 1), _box(5e3, 0, 5e3 + 1, 1),
                   _box(9e3, 9e3, 9e3, 9e3), _box(0, 9e3, 2, 9e3 + 1)]),
    "large_coords": ([_box(1e4, 1e4, 1.2e4, 1.1e4), _box(1e4, 1e4, 1e4 + 1, 1e4 + 1),
                      _box(9999, 9999, 1e4, 1e4), _box(1e4, 1e4, 2e4, 2e4)],
                     [_box(1.05e4, 1e4, 1.2e4, 1.2e4), _box(1e4, 1e4, 1e4 + 1, 1e4 + 1),
                      _box(9999.5, 9999, 1e4, 1e4), _box(0, 0, 1e4, 1e4)]),
}


def _tiled(rows):
  return np.tile(np.asarray(rows, np.float32), (N // len(rows), 1))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_boxes_finite(case):
  pred, target = (_tiled(x) for x in HOSTILE[case])
  out = {name: run(name, pred, target) for name in LOSSES}
  for name, result in out.items():
    assert all(np.all(np.isfinite(r)) for r in result), (case, name)
  if case == "identical":
    for name in ("giou", "diou", "ciou", "eiou", "siou", "siou_neg", "iou_linear"):
      np.testing.assert_allclose(out[name][0][[0, 3]], 0.0, atol=1e-5, err_msg=name)
      # a coincident zero-area pair: no 1/eps gradient (it overflows float16 inputs)
      np.testing.assert_array_less(np.abs(out[name][1][2]), 10.0, err_msg=name)
  if case == "nested":
    np.testing.assert_allclose(out["giou"][0][:3], 1 - jaxloss.box_iou(pred, target)[:3],
                               rtol=1e-6)
  if case == "inverted":
    np.testing.assert_allclose(out["iou_log"][0][:2], -math.log(1e-6), rtol=1e-6)


def test_tiny_boxes_finite():
  # boxes of every scale from 1e-38 to 1e2: squares of sizes and offsets underflow
  # below ~1e-19 and fourth powers below ~1e-10, and no gradient may become inf/NaN
  size = np.geomspace(1e-38, 1e2, N).astype(np.float32)
  zero = np.zeros_like(size)
  pred = np.stack([zero, zero, size, size], -1)
  target = np.stack([size * 0.25, zero, size * 2, size * 0.5], -1)
  for name in LOSSES:
    assert all(np.all(np.isfinite(r)) for r in run(name, pred, target)), name


def test_zero_height_ciou_uses_the_limit_angle():
  pred = _tiled([[0., 0., 4., 0.], [0., 0., 0., 0.]])
  target = _tiled([[0., 0., 4., 4.], [0., 0., 1., 1.]])
  per, grad, _ = run("ciou", pred, target)
  # IoU 0, rho^2/c^2 = 4/32, v = 4/pi^2 (pi/4 - pi/2)^2 = 1/4, alpha = v / (1 + v)
  np.testing.assert_allclose(per[0], 1 + 4 / 32 + 0.25 * 0.25 / 1.25, rtol=1e-5)
  assert_finite(grad)


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_masked_padding_gives_exactly_zero_gradient(fill):
  where = np.arange(N) % 4 != 3
  pred = np.where(where[:, None], PRED, fill).astype(np.float32)
  target = np.where(where[:, None], TARGET, fill).astype(np.float32)
  for name in LOSSES:
    per, gp, gt = run(name, pred, target, where)
    assert_finite((per, gp, gt))
    np.testing.assert_array_equal(gp[~where], 0.0)
    np.testing.assert_array_equal(gt[~where], 0.0)
    np.testing.assert_array_equal(per[~where], 0.0)
    np.testing.assert_allclose(per[where], run(name, PRED, TARGET)[0][where], rtol=1e-6,
                               err_msg=name)


def test_where_mean_counts_only_unmasked_and_all_masked_is_zero():
  mean = jax.jit(jax.value_and_grad(lambda p, w: jaxloss.giou_loss(p, TARGET, where=w)))
  where = np.arange(N) < 10
  value, grad = mean(PRED, where)
  np.testing.assert_allclose(value, run("giou", PRED, TARGET)[0][:10].mean(), rtol=1e-5)
  np.testing.assert_array_equal(grad[10:], 0.0)
  value, grad = mean(PRED, np.zeros(N, bool))
  assert value == 0.0
  np.testing.assert_array_equal(grad, 0.0)


_coord = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e-7, 1e4, -1e4, 5.0]),
                   st.floats(-1e4, 1e4, width=32))


@given(st.lists(st.tuples(*[_coord] * 8), min_size=8, max_size=8))
def test_fuzz_random_pairs_finite(rows):
  boxes = _tiled(rows)
  for name in LOSSES:
    assert all(np.all(np.isfinite(r)) for r in run(name, boxes[:, :4], boxes[:, 4:])), name


# ---------------------------------------------------------------- transforms and API
def test_jit_vmap_and_batch_shapes():
  fn = jaxloss.giou_loss
  pred, target = PRED.reshape(6, 8, 4), TARGET.reshape(6, 8, 4)
  per_image = jax.jit(jax.vmap(lambda p, t: fn(p, t, reduction="sum")))(pred, target)
  np.testing.assert_allclose(per_image, run("giou", PRED, TARGET)[0].reshape(6, 8).sum(-1),
                             rtol=1e-5)
  assert fn(pred, target[0], reduction="none").shape == (6, 8)


def test_check_grads_giou():
  overlap = np.asarray(jaxloss.box_iou(PRED, TARGET)) > 0.05
  pred, target = PRED[overlap][:6], TARGET[overlap][:6]
  check_grads(lambda p: jaxloss.giou_loss(p, target), (pred,), order=1, modes=["rev"],
              atol=2e-2, rtol=2e-2, eps=1e-2)


@pytest.mark.parametrize("name", ["diou", "eiou", "siou", "siou_neg", "iou_log", "eiou_smooth"])
def test_gradient_matches_finite_differences(name):
  """Central differences along a random direction (where the loss is smooth)."""
  direction = RNG.normal(size=PRED.shape).astype(np.float32)
  h = 1e-2
  _, grad, _ = run(name, PRED, TARGET)
  plus = run(name, PRED + h * direction, TARGET)[0]
  minus = run(name, PRED - h * direction, TARGET)[0]
  numeric = (plus - minus) / (2 * h)
  analytic = (grad * direction).sum(-1)
  np.testing.assert_allclose(analytic, numeric, rtol=5e-2, atol=5e-3)


def test_reductions_weight_and_avg_factor():
  fn = jaxloss.giou_loss
  per = run("giou", PRED, TARGET)[0]
  w = RNG.uniform(size=N).astype(np.float32)
  np.testing.assert_allclose(fn(PRED, TARGET, weight=w, reduction="sum"), (per * w).sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(fn(PRED, TARGET, weight=w, avg_factor=3.0), (per * w).sum() / 3,
                             rtol=1e-5)
  w4 = np.repeat(w[:, None], 4, 1) * np.array([0.5, 1.5, 1.0, 1.0], np.float32)
  np.testing.assert_allclose(fn(PRED, TARGET, weight=w4, reduction="none"), per * w, rtol=1e-5)
  with pytest.raises(ValueError, match="reduction"):
    fn(PRED, TARGET, reduction="avg")


def test_low_precision_inputs_compute_in_float32():
  giou = jax.jit(lambda p, t: jaxloss.giou_loss(p, t, reduction="none"))
  out = giou(bf16(PRED), bf16(TARGET))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, run("giou", PRED, TARGET)[0], rtol=5e-2, atol=2e-2)
  big_p, big_t = (np.float16(x * 100 + 1000) for x in (PRED, TARGET))  # up to ~1.4e4
  half = giou(big_p, big_t)
  assert half.dtype == jnp.float32
  per, grad, _ = run("giou", big_p.astype(np.float32), big_t.astype(np.float32))
  np.testing.assert_allclose(half, per, rtol=1e-6)
  assert_finite(grad)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "ltrb"])
def test_box_formats_agree_with_xyxy(fmt):
  if fmt == "ltrb":
    points = RNG.uniform(20, 40, (N, 2)).astype(np.float32)
    pred, target = (jaxloss.box_to_distance(points, b) for b in (PRED, TARGET))
  else:
    pred, target = (jaxloss.box_convert(b, "xyxy", fmt) for b in (PRED, TARGET))
  np.testing.assert_allclose(jaxloss.giou_loss(pred, target, box_format=fmt, reduction="none"),
                             run("giou", PRED, TARGET)[0], rtol=1e-4, atol=1e-5)


def test_errors_name_the_fix():
  with pytest.raises(ValueError, match="'linear', 'square', 'log'"):
    jaxloss.iou_loss(PRED, TARGET, mode="exp")
  with pytest.raises(ValueError, match="'ltrb'"):
    jaxloss.giou_loss(PRED, TARGET, box_format="yxyx")
  with pytest.raises(ValueError, match="size 4"):
    jaxloss.diou_loss(PRED[:, :3], TARGET[:, :3])
  with pytest.raises(ValueError, match="smooth_point"):
    jaxloss.eiou_loss(PRED, TARGET, smooth_point=0.0)
  with pytest.raises(TypeError, match="boolean"):
    jaxloss.giou_loss(PRED, TARGET, where=np.ones(N))


def test_polynomial_atan2_matches_numpy_in_every_quadrant():
  from jaxloss.boxes.iou import _atan2
  angle = np.linspace(-np.pi, np.pi, 721)
  radius = np.geomspace(1e-4, 1e4, 5)
  y = np.concatenate([(np.sin(angle)[:, None] * radius).ravel(), [0, 0, 1, -1]]).astype(np.float32)
  x = np.concatenate([(np.cos(angle)[:, None] * radius).ravel(), [1, -1, 0, 0]]).astype(np.float32)
  y64, x64 = y.astype(np.float64), x.astype(np.float64)
  value, (gy, gx) = jax.jit(jax.value_and_grad(lambda y, x: _atan2(y, x).sum(), (0, 1)))(y, x)
  np.testing.assert_allclose(jax.jit(_atan2)(y, x), np.arctan2(y64, x64), rtol=0, atol=3e-7)
  np.testing.assert_allclose(gy, x64 / (x64**2 + y64**2), rtol=1e-5)
  np.testing.assert_allclose(gx, -y64 / (x64**2 + y64**2), rtol=1e-5)


def test_traced_eps_equals_static_eps():
  pred, target = PRED[:8], TARGET[:8]
  for name in ("giou", "diou", "ciou", "eiou", "siou"):
    fn = LOSSES[name][0]
    traced = jax.jit(lambda p, t, e, fn=fn: fn(p, t, eps=e, reduction="none"))(pred, target, 1e-6)
    np.testing.assert_allclose(traced, fn(pred, target, eps=1e-6, reduction="none"), rtol=1e-6,
                               err_msg=name)
