"""Classification losses against numpy formulas from the papers, optax, and the
numbers of torch / torchvision / mmdetection stored in tests/fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jaxloss
from jaxloss._src.labels import one_hot
from tests.utils import assert_finite, bf16, load_fixture

RNG = np.random.default_rng(7)
N, C, BINS = 6, 4, 9
LOGITS = (RNG.normal(size=(N, C)) * 2).astype(np.float32)
LABELS = np.array([0, 3, 1, 2, 3, 1], np.int32)
OOR_LABELS = np.array([0, -1, 4, 2, 255, 1], np.int32)
SOFT = RNG.uniform(size=(N, C)).astype(np.float32)
HARD = (RNG.uniform(size=(N, C)) > 0.6).astype(np.float32)
PROBS = RNG.dirichlet(np.ones(C), size=N).astype(np.float32)
CLASS_W = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
SCORES = RNG.uniform(0.1, 0.9, size=N).astype(np.float32)
VFL_T = (np.eye(C)[LABELS] * SCORES[:, None]).astype(np.float32)
DFL_LOGITS = RNG.normal(size=(N, BINS)).astype(np.float32)
DFL_T = np.array([0.0, 2.5, 7.99, 8.0, 3.25, 0.4], np.float32)
HEAT_P = (1 / (1 + np.exp(-LOGITS))).astype(np.float32)
HEATMAP = np.where(RNG.uniform(size=(N, C)) > 0.8, 1.0, RNG.uniform(size=(N, C)) * 0.9)
HEATMAP = HEATMAP.astype(np.float32)
ROWS = np.array([True, False, True, True, False, True])


# ---------------------------------------------------------------- numpy references


def log_sig(x):
  return -np.logaddexp(0.0, -x)


def log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_bce(x, t, pw=1.0):
  x, t = np.float64(x), np.float64(t)
  return -(pw * t * log_sig(x) + (1 - t) * log_sig(-x))


def np_focal_paper(x, t, alpha, gamma):
  """Lin et al. eq. (5): -a_t (1 - p_t)^g log p_t, binary t."""
  p = 1 / (1 + np.exp(-np.float64(x)))
  pt = np.where(t == 1, p, 1 - p)
  at = np.where(t == 1, alpha, 1 - alpha)
  return -at * (1 - pt) ** gamma * np.log(pt)


def np_ce_int(x, y, w=None, eps=0.0):
  logp = log_softmax(x)
  w = np.ones(x.shape[-1]) if w is None else np.float64(w)
  nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
  return (1 - eps) * w[y] * nll + eps / x.shape[-1] * (-(logp * w).sum(-1)), w[y]


def np_softmax_focal(x, y, gamma, alpha=None):
  logp = np.take_along_axis(log_softmax(x), y[..., None], -1)[..., 0]
  a = 1.0 if alpha is None else np.asarray(alpha, np.float64)[y]
  return -a * (1 - np.exp(logp)) ** gamma * logp


def np_qfl(x, y, s, beta):
  sig = 1 / (1 + np.exp(-np.float64(x)))
  t = np.eye(x.shape[-1] + 1)[y][:, :-1] * s[:, None]
  return np.abs(t - sig) ** beta * -(t * np.log(sig) + (1 - t) * np.log(1 - sig))


def np_vfl(x, q, alpha, gamma, iou_weighted=True):
  p = 1 / (1 + np.exp(-np.float64(x)))
  pos = -(q if iou_weighted else 1.0) * (q * np.log(p) + (1 - q) * np.log(1 - p))
  neg = -alpha * p ** gamma * np.log(1 - p)
  return np.where(q > 0, pos, neg)


def np_dfl(x, y):
  logp = log_softmax(x)
  yl = np.minimum(np.floor(y), x.shape[-1] - 2).astype(int)
  yr = yl + 1
  lp = lambda i: np.take_along_axis(logp, i[:, None], -1)[:, 0]
  return -((yr - y) * lp(yl) + (y - yl) * lp(yr))


def np_gaussian(p, y, alpha, gamma):
  p, y = np.float64(p), np.float64(y)
  return np.where(y == 1, -(1 - p) ** alpha * np.log(p),
                  -(1 - y) ** gamma * p ** alpha * np.log(1 - p))


# --------------------------------------------------------- one table of cases
# name: (fn, inputs, kwargs, per-element numpy reference, index of a float input to
# make hostile, hostile transform). Inputs share the leading axis N for masking.

def _big(x):
  return (np.sign(x) * 1e4).astype(np.float32)


CASES = {
    "bce_soft": (jaxloss.binary_cross_entropy, (LOGITS, SOFT),
                 {"pos_weight": CLASS_W, "label_smoothing": 0.2},
                 lambda: np_bce(LOGITS, SOFT * 0.8 + 0.1, CLASS_W), _big),
    "bce_labels": (jaxloss.binary_cross_entropy, (LOGITS, OOR_LABELS), {},
                   lambda: np_bce(LOGITS, np.eye(C + 1)[np.clip(OOR_LABELS, -1, C)][:, :C]
                                  * (OOR_LABELS[:, None] >= 0)), _big),
    "ce_int": (jaxloss.cross_entropy, (LOGITS, LABELS),
               {"class_weight": CLASS_W, "label_smoothing": 0.2},
               lambda: np_ce_int(LOGITS, LABELS, CLASS_W, 0.2)[0], _big),
    "ce_probs": (jaxloss.cross_entropy, (LOGITS, PROBS), {"label_smoothing": 0.1},
                 lambda: -((PROBS * 0.9 + 0.025) * log_softmax(LOGITS)).sum(-1), _big),
    "focal_hard": (jaxloss.sigmoid_focal_loss, (LOGITS, HARD), {"alpha": 0.3, "gamma": 2.0},
                   lambda: np_focal_paper(LOGITS, HARD, 0.3, 2.0), _big),
    "focal_labels": (jaxloss.sigmoid_focal_loss, (LOGITS, LABELS), {"gamma": 1.5},
                     lambda: np_focal_paper(LOGITS, np.eye(C)[LABELS], 0.25, 1.5), _big),
    "softmax_focal": (jaxloss.softmax_focal_loss, (LOGITS, LABELS),
                      {"gamma": 2.0, "alpha": CLASS_W},
                      lambda: np_softmax_focal(LOGITS, LABELS, 2.0, CLASS_W), _big),
    "qfl": (jaxloss.quality_focal_loss, (LOGITS, np.where(ROWS, LABELS, C), SCORES),
            {"beta": 2.0}, lambda: np_qfl(LOGITS, np.where(ROWS, LABELS, C), SCORES, 2.0), _big),
    "vfl": (jaxloss.varifocal_loss, (LOGITS, VFL_T), {"alpha": 0.75, "gamma": 2.0},
            lambda: np_vfl(LOGITS, VFL_T, 0.75, 2.0), _big),
    "dfl": (jaxloss.distribution_focal_loss, (DFL_LOGITS, DFL_T), {},
            lambda: np_dfl(DFL_LOGITS, np.float64(DFL_T)), _big),
    "gaussian": (jaxloss.gaussian_focal_loss, (HEAT_P, HEATMAP), {"alpha": 2.0, "gamma": 4.0},
                 lambda: np_gaussian(HEAT_P, HEATMAP, 2.0, 4.0),
                 lambda p: np.round(p).astype(np.float32)),
}
NAMES = sorted(CASES)


def _float_input(x):
  return np.issubdtype(np.asarray(x).dtype, np.floating)


# Each test compiles ONE function returning everything it checks: a compilation is
# far cheaper than op-by-op dispatch of a new shape, and keeps this file fast.


@pytest.mark.parametrize("name", NAMES)
def test_against_numpy_formula(name):
  fn, inputs, kw, ref, _ = CASES[name]
  expected = ref()

  @jax.jit
  def reductions(*a):
    return (fn(*a, reduction="none", **kw), fn(*a, reduction="sum", **kw), fn(*a, **kw),
            fn(*a, reduction="mean", avg_factor=2.5, **kw))

  none, total, mean, averaged = reductions(*inputs)
  np.testing.assert_allclose(none, expected, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(total, expected.sum(), rtol=2e-5)
  if name != "ce_int":  # class-weighted mean: see the torch fixture test
    np.testing.assert_allclose(mean, expected.mean(), rtol=2e-5)
  np.testing.assert_allclose(averaged, expected.sum() / 2.5, rtol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_where_equals_subset_and_blocks_nan(name):
  fn, inputs, kw, _, _ = CASES[name]
  poisoned = np.where(ROWS.reshape((N,) + (1,) * (inputs[0].ndim - 1)), inputs[0], np.nan)

  @jax.jit
  def run(first, *rest):
    subset = fn(*[x[ROWS] for x in (first, *rest)], **kw)
    masked = jax.value_and_grad(lambda f: fn(f, *rest, where=ROWS, **kw))(
        jnp.where(jnp.isnan(poisoned), jnp.nan, first))
    nothing = jax.value_and_grad(lambda f: fn(f, *rest, where=np.zeros(N, bool), **kw))(first)
    return subset, masked, nothing

  subset, (value, grad), (value0, grad0) = run(*inputs)
  np.testing.assert_allclose(value, subset, rtol=2e-5)
  assert_finite(grad)
  np.testing.assert_array_equal(np.asarray(grad)[~ROWS], 0.0)
  assert value0 == 0.0
  np.testing.assert_array_equal(grad0, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_bf16_and_hostile_inputs(name):
  fn, inputs, kw, _, hostile = CASES[name]
  loss = lambda *a: fn(*a, **kw)
  halves = [x.reshape((2, N // 2) + x.shape[1:]) for x in inputs]
  low = [bf16(x) if _float_input(x) else x for x in inputs]
  rounded = [np.asarray(x, np.float32) if _float_input(x) else x for x in low]

  @jax.jit
  def run():
    return (jax.vmap(loss)(*halves), [loss(*[x[i] for x in halves]) for i in range(2)],
            loss(*low), loss(*rounded),
            jax.value_and_grad(lambda x: loss(x, *inputs[1:]))(hostile(inputs[0])))

  mapped, looped, out_low, out_rounded, extreme = run()
  np.testing.assert_allclose(mapped, looped, rtol=1e-6)
  assert out_low.dtype == jnp.float32
  np.testing.assert_allclose(out_low, out_rounded, rtol=1e-5)
  assert_finite(extreme)


# the *_labels cases share the math (in the logits) of bce_soft / focal_hard
@pytest.mark.parametrize("name", [n for n in NAMES if not n.endswith("_labels")])
def test_gradient_matches_finite_differences(name):
  """Central differences of the float32 loss along random directions (all losses are
  smooth in their first input at these points)."""
  fn, inputs, kw, _, _ = CASES[name]
  f = lambda x: fn(x, *inputs[1:], reduction="sum", **kw)
  directions = RNG.normal(size=(3,) + inputs[0].shape).astype(np.float32)
  h = 1e-2 if name != "gaussian" else 1e-3

  @jax.jit
  def run(x):
    g = jax.grad(f)(x)
    fd = jnp.stack([(f(x + h * v) - f(x - h * v)) / (2 * h) for v in directions])
    return fd, jnp.stack([jnp.vdot(g, v) for v in directions])

  fd, analytic = run(inputs[0])
  np.testing.assert_allclose(analytic, fd, rtol=2e-2, atol=2e-2)


def test_check_grads_sigmoid_focal():
  check_grads(jax.jit(lambda x: jaxloss.sigmoid_focal_loss(x, SOFT, gamma=1.5)), (LOGITS,),
              order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_weights_and_errors():
  w = RNG.uniform(size=N).astype(np.float32)
  per, weighted = jax.jit(lambda: (
      jaxloss.sigmoid_focal_loss(LOGITS, SOFT, reduction="none"),
      jaxloss.sigmoid_focal_loss(LOGITS, SOFT, weight=w, reduction="sum")))()
  np.testing.assert_allclose(weighted, (np.asarray(per) * w[:, None]).sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="reduction"):
    jax.eval_shape(lambda: jaxloss.cross_entropy(LOGITS, LABELS, reduction="avg"))
  with pytest.raises(ValueError, match="label_smoothing"):
    jaxloss.cross_entropy(LOGITS, LABELS, label_smoothing=1.5)
  with pytest.raises(ValueError, match="class axis"):
    jaxloss.cross_entropy(LOGITS, LABELS[:3])
  with pytest.raises(TypeError, match="integer labels"):
    jaxloss.softmax_focal_loss(LOGITS, PROBS)
  with pytest.raises(ValueError, match="gamma"):
    jaxloss.sigmoid_focal_loss(LOGITS, SOFT, gamma=-1.0)
  with pytest.raises(ValueError, match="bin axis"):
    jaxloss.distribution_focal_loss(DFL_LOGITS, DFL_T[:2])


# ------------------------------------------------------------------------ optax


def test_optax_overlaps():
  smoothed = optax.smooth_labels(np.eye(C, dtype=np.float32)[LABELS], 0.3)

  @jax.jit
  def pairs():
    return [
        (jaxloss.binary_cross_entropy(LOGITS, SOFT, reduction="none"),
         optax.sigmoid_binary_cross_entropy(LOGITS, SOFT)),
        (jaxloss.sigmoid_focal_loss(LOGITS, SOFT, alpha=0.4, gamma=1.5, reduction="none"),
         optax.sigmoid_focal_loss(LOGITS, SOFT, alpha=0.4, gamma=1.5)),
        (jaxloss.cross_entropy(LOGITS, PROBS, reduction="none"),
         optax.softmax_cross_entropy(LOGITS, PROBS)),
        (jaxloss.cross_entropy(LOGITS, LABELS, reduction="none"),
         optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)),
        (jaxloss.cross_entropy(LOGITS, LABELS, label_smoothing=0.3),
         optax.softmax_cross_entropy(LOGITS, smoothed).mean()),
    ]

  for ours, theirs in pairs():
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- torch fixtures

TORCH_CE_SETTINGS = ("plain", "weight", "ls", "weight_ls")
TORCH_CE_INPUTS = {"int": ("logits", "labels"), "int_noignore": ("logits", "labels_noignore"),
                   "map_int": ("logits_map", "labels_map"), "prob": ("logits", "probs"),
                   "map_prob": ("logits_map", "probs_map")}


@pytest.mark.parametrize("kind", sorted(TORCH_CE_INPUTS))
def test_torch_cross_entropy_fixture(kind):
  d = load_fixture("torch_classification.npz")
  x, y = TORCH_CE_INPUTS[kind]
  labels = d[y] if "prob" in kind else d[y].astype(np.int32)
  logits = d[x].astype(np.float32)

  @jax.jit
  def outputs():
    out = {}
    for setting in TORCH_CE_SETTINGS:
      kw = {"label_smoothing": 0.1} if "ls" in setting else {}
      if "weight" in setting:
        kw["class_weight"] = d["class_weight"]
      for reduction in ("none", "mean", "sum"):
        out[f"ce_{kind}_{setting}_{reduction}"] = jaxloss.cross_entropy(
            logits, labels, ignore_index=-100, reduction=reduction, **kw)
    return out

  for key, value in outputs().items():
    np.testing.assert_allclose(value, d[key], rtol=1e-5, atol=2e-5, err_msg=key)


def test_torch_bce_and_torchvision_focal_fixture():
  d = load_fixture("torch_classification.npz")
  x, t = d["logits"].astype(np.float32), d["bce_target"]
  bce_kw = {"plain": {}, "posw": {"pos_weight": d["pos_weight"]},
            "w": {"weight": d["bce_weight"]},
            "posw_w": {"pos_weight": d["pos_weight"], "weight": d["bce_weight"]}}
  focal_kw = {"a025_g2": (0.25, 2.0), "anone_g05": (None, 0.5)}

  @jax.jit
  def outputs():
    out = {}
    for r in ("none", "mean"):
      for key, kw in bce_kw.items():
        out[f"bce_{key}_{r}"] = jaxloss.binary_cross_entropy(x, t, reduction=r, **kw)
      out[f"bce_map_posw_{r}"] = jaxloss.binary_cross_entropy(
          d["logits_map"], d["bce_target_map"], pos_weight=d["pos_weight"], reduction=r)
      for tag, (alpha, gamma) in focal_kw.items():
        for logits, target, key in ((x, t, f"focal_{tag}_hard"),
                                    (x, d["focal_soft_target"], f"focal_{tag}_soft"),
                                    (d["logits_map"], d["bce_target_map"], f"focal_map_{tag}")):
          out[f"{key}_{r}"] = jaxloss.sigmoid_focal_loss(logits, target, alpha=alpha,
                                                         gamma=gamma, reduction=r)
    # torchvision's alpha=-1 disables alpha too
    out["focal_anone_g05_hard_mean"] = jaxloss.sigmoid_focal_loss(x, t, alpha=-1.0, gamma=0.5)
    return out

  for key, value in outputs().items():
    np.testing.assert_allclose(value, d[key], rtol=1e-5, atol=1e-5, err_msg=key)


# --------------------------------------------------------------- mmdet fixtures


def test_mmdet_fixture():
  d = load_fixture("mmdet_losses.npz")
  x, labels = d["cls_logits"], d["cls_labels"]
  focal = jaxloss.build_loss(dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25))
  qfl = jaxloss.build_loss(dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0))
  vfl = {key: jaxloss.build_loss(dict(type="VarifocalLoss", use_sigmoid=True,
                                      iou_weighted=key == "iouw"))
         for key in ("iouw", "noiouw")}
  ce = {key: jaxloss.build_loss(dict(type="CrossEntropyLoss", ignore_index=-100,
                                     avg_non_ignore=key == "avgnonignore"))
        for key in ("avgall", "avgnonignore")}
  mask_ce = jaxloss.build_loss(dict(type="CrossEntropyLoss", use_mask=True))

  @jax.jit
  def outputs():
    out = {}
    for r in ("none", "mean"):
      out[f"focal_int_{r}"] = focal(x, labels, reduction_override=r)
      out[f"focal_onehot_{r}"] = jaxloss.sigmoid_focal_loss(x, d["cls_onehot"], reduction=r)
      out[f"qfl_{r}"] = qfl(x, labels, d["qfl_scores"], reduction_override=r)
      for key, loss in vfl.items():
        out[f"vfl_{key}_{r}"] = loss(x, d["vfl_target"], reduction_override=r)
      out[f"dfl_{r}"] = jaxloss.distribution_focal_loss(d["dfl_logits"], d["dfl_target"],
                                                        reduction=r)
      out[f"gaussian_focal_{r}"] = jaxloss.gaussian_focal_loss(d["gfl_prob"], d["gfl_heatmap"],
                                                               reduction=r)
      for key, loss in ce.items():
        out[f"ce_{key}_{r}"] = loss(x, d["ce_labels"], reduction_override=r)
    out["gaussian_focal_sum_over_npos"] = jaxloss.gaussian_focal_loss(
        d["gfl_prob"], d["gfl_heatmap"], avg_factor=4.0)
    out["mask_ce_mean"] = mask_ce(d["mask_logits"], d["mask_target"], d["mask_label"])
    return out

  for key, value in outputs().items():
    np.testing.assert_allclose(value, d[key], rtol=1e-5, atol=1e-5, err_msg=key)
  with pytest.raises(ValueError, match="use_sigmoid"):
    focal = jaxloss.build_loss(dict(type="FocalLoss", use_sigmoid=False))
    jax.eval_shape(focal, x, labels)
  with pytest.raises(TypeError, match="use_mask"):
    jax.eval_shape(mask_ce, d["mask_logits"], d["mask_target"])


def test_mmdet_cross_entropy_sigmoid_and_class_weight_semantics():
  labels = np.array([0, -1, 4, 2, 255, 1], np.int32)
  per = np_bce(LOGITS, np.eye(C + 1)[np.clip(labels, 0, C)][:, :C] * (labels[:, None] < C))
  valid = labels >= 0
  counted = valid & (labels != 255)
  rpn_labels = np.array([0, 1, 0, 1, 1, 0], np.int32)
  bce = jaxloss.build_loss(dict(type="CrossEntropyLoss", use_sigmoid=True))
  bce_ni = jaxloss.build_loss(dict(type="CrossEntropyLoss", use_sigmoid=True,
                                   avg_non_ignore=True, ignore_index=255))
  ce = jaxloss.build_loss(dict(type="CrossEntropyLoss", class_weight=tuple(CLASS_W)))

  @jax.jit
  def outputs():
    return (bce(LOGITS, labels), bce_ni(LOGITS, labels),
            bce(LOGITS[:, :1], rpn_labels, reduction_override="none"), ce(LOGITS, LABELS))

  mean_all, mean_counted, rpn, ce_mean = outputs()
  np.testing.assert_allclose(mean_all, (per * valid[:, None]).sum() / (N * C), rtol=1e-5)
  np.testing.assert_allclose(mean_counted, (per * counted[:, None]).sum() / (counted.sum() * C),
                             rtol=1e-5)
  # RPN: a single sigmoid channel, label 0 = foreground, 1 = background (mmdet)
  np.testing.assert_allclose(rpn[:, 0], np_bce(LOGITS[:, 0], 1 - rpn_labels), rtol=1e-5)
  # softmax: mmdet's mean divides by N, not by the summed class weights
  np.testing.assert_allclose(ce_mean, np_ce_int(LOGITS, LABELS, CLASS_W)[0].mean(), rtol=1e-5)


# ------------------------------------------------------------- label semantics


@pytest.mark.parametrize("ignore", [255, -1])
def test_cross_entropy_ignore_index_and_out_of_range(ignore):
  labels = np.array([0, ignore, 3, 1, ignore, 2], np.int32)
  keep = labels != ignore
  per, w_y = np_ce_int(LOGITS[keep], labels[keep], CLASS_W, 0.1)
  kw = dict(class_weight=CLASS_W, label_smoothing=0.1)

  @jax.jit
  def outputs():
    return (jaxloss.cross_entropy(LOGITS, labels, ignore_index=ignore, **kw),
            jaxloss.cross_entropy(LOGITS, labels, ignore_index=ignore, reduction="none"),
            jaxloss.cross_entropy(LOGITS, labels, **kw),
            jax.grad(lambda x: jaxloss.softmax_focal_loss(x, labels, ignore_index=ignore))(LOGITS),
            jaxloss.cross_entropy(LOGITS, np.full(N, ignore, np.int32), ignore_index=ignore))

  mean, none, no_ignore_index, grad, all_ignored = outputs()
  np.testing.assert_allclose(mean, per.sum() / w_y.sum(), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(none)[~keep], 0.0)
  # out-of-range labels without ignore_index never index: they are removed too
  np.testing.assert_allclose(no_ignore_index, mean, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad)[~keep], 0.0)
  assert all_ignored == 0.0


def test_label_semantics():
  hot = np.eye(C + 1)[np.where((OOR_LABELS >= 0) & (OOR_LABELS < C), OOR_LABELS, C)][:, :C]
  one = LOGITS[:, :1]
  binary = np.array([1, 0, 1, 1, 0, 0], np.int32)

  @jax.jit
  def outputs():
    return (
        jaxloss.sigmoid_focal_loss(LOGITS, OOR_LABELS, reduction="none"),
        jaxloss.sigmoid_focal_loss(LOGITS, hot, reduction="none"),
        jaxloss.sigmoid_focal_loss(one, binary, reduction="none"),
        jaxloss.sigmoid_focal_loss(one, binary[:, None].astype(np.float32), reduction="none"),
        jaxloss.softmax_focal_loss(LOGITS, LABELS, gamma=0.0, reduction="none"),
        jaxloss.cross_entropy(LOGITS, LABELS, reduction="none"),
        jaxloss.softmax_focal_loss(LOGITS, LABELS, gamma=0.5, alpha=0.25, reduction="none"),
        jaxloss.distribution_focal_loss(DFL_LOGITS[:2], np.array([8.0, 0.0], np.float32),
                                        reduction="none"),
        one_hot(np.array([-1, 0, 2, 3, 255]), 3),
    )

  out = outputs()
  np.testing.assert_allclose(out[0], out[1], rtol=1e-6)  # out of range = background
  np.testing.assert_allclose(out[2], out[3], rtol=1e-6)  # C == 1: labels are binary
  np.testing.assert_allclose(out[4], out[5], rtol=1e-6)  # gamma=0 focal = CE
  np.testing.assert_allclose(out[6], np_softmax_focal(LOGITS, LABELS, 0.5) * 0.25, rtol=1e-5)
  np.testing.assert_allclose(out[7], -log_softmax(DFL_LOGITS[:2])[[0, 1], [8, 0]], rtol=1e-5)
  np.testing.assert_array_equal(out[8], [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_gaussian_focal_finite_at_probabilities_zero_and_one():
  probs = np.array([[0.0, 1.0, 0.0, 1.0]], np.float32)
  heat = np.array([[1.0, 1.0, 0.0, 0.5]], np.float32)
  value, grad = jax.jit(jax.value_and_grad(
      lambda p: jaxloss.gaussian_focal_loss(p, heat)))(probs)
  assert_finite((value, grad))
  np.testing.assert_allclose(value, (-np.log(1e-12) - 0.5 ** 4 * np.log(1e-12)) / 4, rtol=1e-4)


# Fixed shapes: eager op dispatch is compiled once and reused by every example.
@settings(max_examples=10)
@given(st.floats(0.0, 0.5), st.booleans(), st.integers(0, 2**16))
def test_cross_entropy_class_weight_mean_property(eps, weighted, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(5, 3)).astype(np.float32) * 3
  y = rng.integers(-1, 4, size=5).astype(np.int32)
  w = rng.uniform(0.1, 2.0, size=3).astype(np.float32) if weighted else None
  keep = (y >= 0) & (y < 3)
  per, w_y = np_ce_int(x[keep], y[keep], w, eps)
  expected = per.sum() / w_y.sum() if keep.any() else 0.0
  out = jaxloss.cross_entropy(x, y, class_weight=w, label_smoothing=eps)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-6)


@settings(max_examples=10)
@given(st.floats(0.0, 3.0), st.one_of(st.none(), st.floats(0.0, 1.0)), st.integers(0, 2**16))
def test_sigmoid_focal_hard_targets_property(gamma, alpha, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, 5)).astype(np.float32) * 4
  t = (rng.uniform(size=(3, 5)) > 0.5).astype(np.float32)
  expected = np_focal_paper(x, t, 0.5 if alpha is None else alpha, gamma)
  expected = expected * (2.0 if alpha is None else 1.0)
  out = jaxloss.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_axis_name_class_weighted_mean_equals_whole_batch(devices):
  mesh = Mesh(np.array(devices[:2]), ("data",))
  labels = np.array([0, 255, 255, 2, 3, 1], np.int32)
  kw = dict(class_weight=CLASS_W, ignore_index=255, label_smoothing=0.1)

  def per_device(x, y):
    return jax.lax.pmean(jaxloss.cross_entropy(x, y, axis_name="data", **kw), "data")

  out = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                              out_specs=P()))(LOGITS, labels)
  keep = labels != 255
  per, w_y = np_ce_int(LOGITS[keep], labels[keep], CLASS_W, 0.1)
  np.testing.assert_allclose(out, per.sum() / w_y.sum(), rtol=1e-5)


def test_narrow_label_dtypes_and_varifocal_shape_error():
  logits = np.zeros((2, 300), np.float32)
  labels = np.array([5, 299])
  wide = jaxloss.sigmoid_focal_loss(logits, labels.astype(np.int32), reduction="sum")
  narrow = jaxloss.sigmoid_focal_loss(logits, labels.astype(np.uint16), reduction="sum")
  np.testing.assert_allclose(narrow, wide, rtol=1e-6)
  small = jaxloss.sigmoid_focal_loss(logits[:, :10], np.array([5, 255], np.uint8),
                                     reduction="none")
  np.testing.assert_allclose(small[1], small[1, 0])  # 255 is background: one value per row
  with pytest.raises(ValueError, match="one_hot"):
    jaxloss.varifocal_loss(np.zeros((4, 3)), np.array([0, 1, 2, 3]))
