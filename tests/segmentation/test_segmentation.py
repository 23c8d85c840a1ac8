"""Segmentation losses against numpy references, MONAI/smp numbers and hostile inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxloss
from jaxloss import segmentation as seg
from jaxloss.configs.quick import QUICK_REFERENCE
from tests.utils import assert_finite, bf16, jit_counting, load_fixture

B, H, W, C = 2, 6, 5, 4
IGN = 255


def _sample(seed=0, ignore_frac=0.2):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, (B, H, W, C)).astype(np.float32)
  labels = rng.choice(C, size=(B, H, W), p=[0.6, 0.2, 0.2, 0.0])
  labels[1, :2, :2] = 3  # class 3 only in image 1
  ignored = labels.copy()
  ignored[rng.uniform(size=labels.shape) < ignore_frac] = IGN
  return logits, labels, ignored


# ----------------------------------------------------------------------------- numpy references

def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_stats(logits, labels, *, ignore=None, per_image=False, background=True, squared=False):
  """I, P, T per class from the formulas; ignored and out-of-range pixels removed by zeroing."""
  p = np_softmax(logits.astype(np.float64))
  c = logits.shape[-1]
  inside = (labels >= 0) & (labels < c)
  t = np.eye(c)[np.where(inside, labels, 0)] * inside[..., None]
  v = (inside & (labels != ignore)).astype(float)
  p, t = p * v[..., None], t * v[..., None]
  if not background:
    p, t = p[..., 1:], t[..., 1:]
  axes = (1, 2) if per_image else (0, 1, 2)
  sq = np.square if squared else (lambda x: x)
  return (p * t).sum(axes), sq(p).sum(axes), sq(t).sum(axes), t.sum(axes)


def np_mean(loss, mass, classes, class_weight=None):
  w = np.ones(loss.shape[-1]) if class_weight is None else np.asarray(class_weight, float)
  w = np.broadcast_to(w, loss.shape) * (mass > 0 if classes == "present" else 1)
  return (w * loss).sum() / w.sum()


def np_lovasz_grad(gt_sorted):
  gts = gt_sorted.sum()
  inter = gts - np.cumsum(gt_sorted)
  union = gts + np.cumsum(1 - gt_sorted)
  jaccard = 1.0 - inter / union
  jaccard[1:] = jaccard[1:] - jaccard[:-1]
  return jaccard


def np_lovasz_softmax_flat(probas, labels, classes):
  """Berman et al.'s ``lovasz_softmax_flat`` (ignored pixels already removed)."""
  if probas.size == 0:
    return 0.0
  losses = []
  for c in range(probas.shape[1]):
    fg = (labels == c).astype(float)
    if classes == "present" and fg.sum() == 0:
      continue
    errors = np.abs(fg - probas[:, c])
    perm = np.argsort(-errors, kind="stable")
    losses.append(errors[perm] @ np_lovasz_grad(fg[perm]))
  return np.mean(losses) if losses else 0.0


def np_lovasz_softmax(logits, labels, *, classes="present", per_image=False, ignore=None):
  """Berman et al.'s ``lovasz_softmax``: ignored pixels are REMOVED (boolean indexing)."""
  probas = np_softmax(logits.astype(np.float64))

  def flat(p, lab):
    p, lab = p.reshape(-1, p.shape[-1]), lab.reshape(-1)
    keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    return p[keep], lab[keep]

  if per_image:
    return np.mean([np_lovasz_softmax_flat(*flat(p, lab), classes) for p, lab in
                    zip(probas, labels, strict=True)])
  return np_lovasz_softmax_flat(*flat(probas, labels), classes)


def np_lovasz_hinge(logits, labels, *, per_image=False, ignore=None):
  """Berman et al.'s ``lovasz_hinge``: ignored pixels are REMOVED."""
  def flat_loss(x, y):
    x, y = x.reshape(-1).astype(np.float64), y.reshape(-1)
    if ignore is not None:
      x, y = x[y != ignore], y[y != ignore]
    if y.size == 0:
      return 0.0
    y = y.astype(float)
    errors = 1.0 - x * (2 * y - 1)
    perm = np.argsort(-errors, kind="stable")
    return np.maximum(errors[perm], 0) @ np_lovasz_grad(y[perm])

  if per_image:
    return np.mean([flat_loss(x, y) for x, y in zip(logits, labels, strict=True)])
  return flat_loss(logits, labels)


FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_all(fns, *args):
  """Evaluates a dict of functions of the same inputs in ONE quick compilation."""
  return jax.jit(lambda *a: {k: f(*a) for k, f in fns.items()},
                 compiler_options=FAST_COMPILE)(*args)


# ----------------------------------------------------------------------------- formulas

REGION = [
    dict(per_image=False, classes="all"),
    dict(per_image=True, classes="present", ignore_index=IGN),
    dict(per_image=False, classes="present", ignore_index=IGN, include_background=False,
         class_weight=[0.5, 1.0, 2.0, 4.0]),
    dict(per_image=True, classes="all", include_background=False, class_weight=[1.0, 2.0, 3.0]),
]
SMOOTH, ALPHA, BETA = 0.7, 0.3, 0.8


def _np_region(kw, logits, labels, ignored, squared=False):
  lab = ignored if kw.get("ignore_index") is not None else labels
  stats = np_stats(logits, lab, ignore=kw.get("ignore_index"), per_image=kw["per_image"],
                   background=kw.get("include_background", True), squared=squared)
  cw = kw.get("class_weight")
  if cw is not None and len(cw) == C and not kw.get("include_background", True):
    cw = cw[1:]
  return lab, stats, cw


def test_dice_jaccard_tversky_match_formulas():
  logits, labels, ignored = _sample()
  fns, expected = {}, {}
  for n, kw in enumerate(REGION):
    for squared in (False, True):
      lab, (i, p, t, m), cw = _np_region(kw, logits, labels, ignored, squared)
      dice = 1 - (2 * i + SMOOTH) / (p + t + SMOOTH)
      fns[n, "dice_none", squared] = functools.partial(
          seg.dice_loss, labels=lab, smooth=SMOOTH, squared=squared, reduction="none", **kw)
      expected[n, "dice_none", squared] = (dice * (m > 0 if kw["classes"] == "present" else 1)
                                           * (1 if cw is None else np.asarray(cw)))
      fns[n, "dice", squared] = functools.partial(seg.dice_loss, labels=lab, smooth=SMOOTH,
                                                  squared=squared, **kw)
      expected[n, "dice", squared] = np_mean(dice, m, kw["classes"], cw)
      fns[n, "jaccard", squared] = functools.partial(seg.jaccard_loss, labels=lab, smooth=SMOOTH,
                                                     squared=squared, **kw)
      expected[n, "jaccard", squared] = np_mean(1 - (i + SMOOTH) / (p + t - i + SMOOTH), m,
                                                kw["classes"], cw)
    lab, (i, p, t, m), cw = _np_region(kw, logits, labels, ignored)
    ti = (i + SMOOTH) / (i + ALPHA * (p - i) + BETA * (t - i) + SMOOTH)
    for gamma in (1.0, 2.0, 0.75):
      fns[n, "tversky", gamma] = functools.partial(
          seg.tversky_loss, labels=lab, alpha=ALPHA, beta=BETA, gamma=gamma, smooth=SMOOTH, **kw)
      expected[n, "tversky", gamma] = np_mean((1 - ti) ** gamma, m, kw["classes"], cw)
  got = jit_all({str(k): f for k, f in fns.items()}, logits)
  for k, e in expected.items():
    np.testing.assert_allclose(got[str(k)], e, rtol=2e-5, atol=1e-6, err_msg=str(k))


def test_tversky_identities():
  logits, _, ignored = _sample(1)
  kw = dict(labels=ignored, ignore_index=IGN, per_image=True, classes="present",
            reduction="none")
  s = 0.4
  got = jit_all({
      "tv": functools.partial(seg.tversky_loss, smooth=s, **kw),
      "dice2s": functools.partial(seg.dice_loss, smooth=2 * s, **kw),
      "tv0": functools.partial(seg.tversky_loss, smooth=0.0, **kw),
      "dice0": functools.partial(seg.dice_loss, smooth=0.0, **kw),
      "tv11": functools.partial(seg.tversky_loss, alpha=1.0, beta=1.0, smooth=s, **kw),
      "jac": functools.partial(seg.jaccard_loss, smooth=s, **kw),
      "g1": functools.partial(seg.tversky_loss, alpha=0.2, beta=0.8, gamma=1.0, **kw),
      "g": functools.partial(seg.tversky_loss, alpha=0.2, beta=0.8, **kw),
  }, logits)
  for a, b in (("tv", "dice2s"), ("tv0", "dice0"), ("tv11", "jac"), ("g1", "g")):
    np.testing.assert_allclose(got[a], got[b], rtol=1e-6, err_msg=a)


def test_generalized_dice_matches_formula():
  logits, _, ignored = _sample(2)
  fns, expected = {}, {}
  for wt, k in (("square", 2), ("simple", 1), ("uniform", 0)):
    for per_image in (False, True):
      for classes in ("all", "present"):
        i, p, t, m = np_stats(logits, ignored, ignore=IGN, per_image=per_image)
        with np.errstate(divide="ignore"):
          w = np.where(m > 0, 1.0 / m ** k, 0.0)
        if classes == "all":
          w = np.where(m > 0, w, w.max(-1, keepdims=True))
        key = f"{wt}{per_image}{classes}"
        expected[key] = 1 - (2 * (w * i).sum(-1) + 1e-5) / ((w * (p + t)).sum(-1) + 1e-5)
        fns[key] = functools.partial(seg.generalized_dice_loss, labels=ignored, weight_type=wt,
                                     per_image=per_image, classes=classes, ignore_index=IGN,
                                     reduction="none")
  got = jit_all(fns, logits)
  for key, e in expected.items():
    np.testing.assert_allclose(got[key], e, rtol=2e-5, err_msg=key)


# ----------------------------------------------------------------------------- Lovasz vs Berman

def test_lovasz_softmax_matches_berman():
  logits, labels, ignored = _sample(3)
  lab0 = labels.copy()
  lab0[0] = IGN  # image 0 entirely ignored: not counted by per_image (Berman: counted as 0)
  fns, expected = {}, {}
  for per_image in (False, True):
    for classes in ("present", "all"):
      for name, lab, ign in (("plain", labels, None), ("ign", ignored, IGN)):
        key = f"{per_image}{classes}{name}"
        fns[key] = functools.partial(seg.lovasz_softmax_loss, labels=lab, per_image=per_image,
                                     classes=classes, ignore_index=ign)
        expected[key] = np_lovasz_softmax(logits, lab, classes=classes, per_image=per_image,
                                          ignore=ign)
  fns["none"] = functools.partial(seg.lovasz_softmax_loss, labels=ignored, ignore_index=IGN,
                                  reduction="none")
  probas = np_softmax(logits.astype(np.float64)).reshape(-1, C)
  keep = ignored.reshape(-1) != IGN
  expected["none"] = [_np_lovasz_one_class(probas[keep][:, c], ignored.reshape(-1)[keep] == c)
                      for c in range(C)]
  fns["all_ignored_image"] = functools.partial(seg.lovasz_softmax_loss, labels=lab0,
                                               per_image=True, ignore_index=IGN)
  expected["all_ignored_image"] = np_lovasz_softmax(logits[1:], labels[1:], per_image=True)
  got = jit_all(fns, logits)
  for key, e in expected.items():
    np.testing.assert_allclose(got[key], e, rtol=2e-5, atol=1e-7, err_msg=key)


def _np_lovasz_one_class(probas_c, fg):
  """Berman's per-class term; 0 for a class without pixels (as ``"present"`` reports it)."""
  fg = fg.astype(float)
  if not fg.any():
    return 0.0
  errors = np.abs(fg - probas_c)
  perm = np.argsort(-errors, kind="stable")
  return errors[perm] @ np_lovasz_grad(fg[perm])


def test_lovasz_hinge_matches_berman():
  rng = np.random.default_rng(5)
  x = rng.normal(0, 2, (3, 7, 6)).astype(np.float32)
  y = (rng.uniform(size=x.shape) < 0.3).astype(np.int32)
  y[2] = 0  # an image without foreground
  yi = np.where(rng.uniform(size=x.shape) < 0.25, IGN, y)
  fns, expected = {}, {}
  for per_image in (False, True):
    for name, lab, ign in (("plain", y, None), ("ign", yi, IGN)):
      fns[f"{per_image}{name}"] = functools.partial(seg.lovasz_hinge_loss, labels=lab,
                                                    per_image=per_image, ignore_index=ign)
      expected[f"{per_image}{name}"] = np_lovasz_hinge(x, lab, per_image=per_image, ignore=ign)
    fns[f"{per_image}channel"] = lambda z, p=per_image: seg.lovasz_hinge_loss(z[..., None], y,
                                                                             per_image=p)
    expected[f"{per_image}channel"] = np_lovasz_hinge(x, y, per_image=per_image)
  got = jit_all(fns, x)
  for key, e in expected.items():
    np.testing.assert_allclose(got[key], e, rtol=2e-5, atol=1e-6, err_msg=key)


# ----------------------------------------------------------------------------- MONAI and smp

MONAI = load_fixture("monai_seg.npz")
SMP = load_fixture("smp_seg.npz")


def _monai_dice_kwargs(key):
  """MONAI DiceLoss(batch=b, include_background=ib, smooth_nr=smooth_dr=s, squared_pred=q)
  == dice_loss(per_image=not b, include_background=ib, smooth=s, squared=q, classes="all")."""
  parts = key.split("_")
  kw = dict(per_image="b0" in parts, classes="all", include_background="bg0" not in parts,
            squared=parts[1] == "sq", smooth=1.0 if "s1" in parts else 1e-5,
            reduction=parts[-1])
  return kw


def test_monai_dice_tversky_gdl():
  x = MONAI["logits"].astype(np.float32)
  fns = {}
  for key in (k for k in MONAI if k.startswith(("dice_sm_", "dice_sq_"))):
    labels = MONAI["labels_abs2" if "abs2" in key else "labels"]
    fns[key] = functools.partial(seg.dice_loss, labels=labels, **_monai_dice_kwargs(key))
  assert len(fns) == 48
  for bg in (0, 1):
    for b in (0, 1):
      for red in ("none", "mean"):
        fns[f"tversky_bg{bg}_b{b}_{red}"] = functools.partial(
            seg.tversky_loss, labels=MONAI["labels"], alpha=0.3, beta=0.7, smooth=1e-5,
            include_background=bool(bg), per_image=not b, reduction=red)
  for lk in ("", "abs2_"):
    for wt in ("square", "simple", "uniform"):
      for b in (0, 1):
        for red in ("none", "mean"):
          fns[f"gdl64_{lk}{wt}_b{b}_{red}"] = functools.partial(
              seg.generalized_dice_loss, labels=MONAI["labels_abs2" if lk else "labels"],
              weight_type=wt, per_image=not b, reduction=red)
  got = jit_all(fns, x)
  for key, value in got.items():
    np.testing.assert_allclose(value, MONAI[key].reshape(np.shape(value)), rtol=3e-5, atol=1e-6,
                               err_msg=key)


def test_monai_dice_sigmoid_dense_targets():
  inputs = {"bin": ("logits_bin", "target_bin"), "ml": ("logits", "target_ml"),
            "oh": ("logits", "labels_onehot")}
  fns = {}
  for name, (xk, tk) in inputs.items():
    for b in (0, 1):
      for red in ("none", "mean"):
        fns[f"dice_sig_{name}_b{b}_{red}"] = lambda _, xk=xk, tk=tk, b=b, red=red: seg.dice_loss(
            MONAI[xk].astype(np.float32), MONAI[tk].astype(np.float32), activation="sigmoid",
            smooth=1e-5, per_image=not b, reduction=red)
  got = jit_all(fns, 0.0)
  for key, value in got.items():
    np.testing.assert_allclose(value, MONAI[key].reshape(np.shape(value)), rtol=3e-5, atol=1e-6,
                               err_msg=key)


def test_smp_dice_jaccard_tversky():
  """smp 0.6 (multiclass, pooled batch) == classes="present", per_image=False, avg_factor=C
  (absent classes count as 0); smp's Dice smoothing s is our 2s; smp's TverskyLoss(gamma=g)
  is (our gamma=1 mean) ** g, as smp raises the class mean to gamma."""
  x = SMP["logits"].astype(np.float32)
  fns = {}
  for ign in ("noign", "ign255"):
    labels = SMP["labels_ign" if ign == "ign255" else "labels"]
    kw = dict(labels=labels, classes="present", per_image=False, avg_factor=C,
              ignore_index=IGN if ign == "ign255" else None)
    for s in (0, 1):
      fns[f"dice_mc_s{s}_{ign}"] = functools.partial(seg.dice_loss, smooth=2.0 * s, **kw)
      fns[f"jaccard_mc_s{s}_{ign}"] = functools.partial(seg.jaccard_loss, smooth=float(s), **kw)
      fns[f"tversky_mc_s{s}_g1_{ign}"] = functools.partial(seg.tversky_loss, alpha=0.3,
                                                           beta=0.7, smooth=float(s), **kw)
      fns[f"tversky_mc_s{s}_g2_{ign}"] = lambda z, kw=kw, s=s: seg.tversky_loss(
          z, alpha=0.3, beta=0.7, smooth=float(s), **kw) ** 2
    fns[f"dice_mc_s0_{ign}_grad"] = jax.grad(functools.partial(seg.dice_loss, smooth=0.0, **kw))
  xb = SMP["logits_bin4"].astype(np.float32)
  yb = SMP["labels_bin"].astype(np.int32)
  for s in (0, 1):
    kw = dict(activation="sigmoid", smooth=2.0 * s, classes="present")
    fns[f"dice_bin_s{s}"] = lambda _, kw=kw: seg.dice_loss(xb, yb, **kw)
    fns[f"dice_bin_empty_s{s}"] = lambda _, kw=kw: seg.dice_loss(xb, 0 * yb, **kw)
  got = jit_all(fns, x)
  for key, value in got.items():
    np.testing.assert_allclose(value, SMP[key], rtol=1e-4 if "grad" in key else 3e-5,
                               atol=1e-7, err_msg=key)


def test_smp_lovasz():
  x = SMP["logits"].astype(np.float32)
  xb = SMP["logits_bin"].astype(np.float32)
  fns = {}
  for pi in (0, 1):
    for ign in ("noign", "ign255"):
      ii = IGN if ign == "ign255" else None
      labels = SMP["labels_ign" if ii else "labels"]
      yb = SMP["labels_bin_ign" if ii else "labels_bin"]
      grad = jax.value_and_grad if ii else lambda f: lambda z: (f(z), None)
      fns[f"mc_pi{pi}_{ign}"] = grad(functools.partial(
          seg.lovasz_softmax_loss, labels=labels, per_image=bool(pi), ignore_index=ii))
      fns[f"bin_pi{pi}_{ign}"] = lambda _, yb=yb, pi=pi, ii=ii, grad=grad: grad(
          functools.partial(seg.lovasz_hinge_loss, labels=yb, per_image=bool(pi),
                            ignore_index=ii))(xb)
  got = jit_all(fns, x)
  for key, (value, grad) in got.items():
    np.testing.assert_allclose(value, SMP[f"lovasz64_{key}"], rtol=3e-5, err_msg=key)
    if grad is not None:
      np.testing.assert_allclose(grad, SMP[f"lovasz64_{key}_grad"], rtol=1e-4, atol=1e-6,
                                 err_msg=key)


# ----------------------------------------------------------------------------- masking, hostile

REGION_LOSSES = {
    "dice": functools.partial(seg.dice_loss, per_image=True, classes="present"),
    "jaccard": functools.partial(seg.jaccard_loss, squared=True),
    "tversky": functools.partial(seg.tversky_loss, alpha=0.3, beta=0.7, gamma=0.75),
    "gdl": seg.generalized_dice_loss,
    "lovasz": functools.partial(seg.lovasz_softmax_loss, per_image=True),
    "hinge": lambda x, y, **kw: seg.lovasz_hinge_loss(x[..., 0], y, **kw),
    "combined": functools.partial(seg.combined_segmentation_loss,
                                  class_weight=[0.5, 1.0, 2.0, 4.0]),
    "focal_dice": functools.partial(seg.focal_dice_loss, class_weight=[0.5, 1.0, 2.0, 4.0]),
}


def test_ignored_pixels_change_neither_value_nor_grad():
  logits, labels, ignored = _sample(7)
  ignored_mask = ignored == IGN
  poisoned = np.where(ignored_mask[..., None], np.nan, logits).astype(np.float32)
  other = np.where(ignored_mask, -1, labels)  # another ignore value: same result
  fns = {}
  for name, fn in REGION_LOSSES.items():
    vg = lambda lab, fn=fn, **kw: jax.value_and_grad(lambda z: fn(z, lab, **kw))
    fns[name, "ref"] = lambda x, p, vg=vg: vg(ignored, ignore_index=IGN)(x)
    fns[name, "where"] = lambda x, p, vg=vg: vg(labels, where=~ignored_mask)(p)
    if name == "hinge":  # any ignore value works
      fns[name, "-1"] = lambda x, p, vg=vg: vg(other, ignore_index=-1)(p)
    else:  # softmax losses drop labels outside [0, C) as cross_entropy does
      fns[name, "out_of_range"] = lambda x, p, vg=vg: vg(ignored)(p)
  got = jit_all({str(k): f for k, f in fns.items()}, logits, poisoned)
  for name in REGION_LOSSES:
    ref_v, ref_g = got[str((name, "ref"))]
    for case in ("-1", "where", "out_of_range"):
      if str((name, case)) not in got:
        continue
      v, g = got[str((name, case))]
      np.testing.assert_allclose(v, ref_v, rtol=1e-6, err_msg=f"{name} {case}")
      np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-8, err_msg=f"{name} {case}")
      assert np.all(np.asarray(g)[ignored_mask] == 0), (name, case)


def test_hostile_inputs_are_finite():
  logits, labels, _ = _sample(8)
  huge = (np.where(np.arange(C) % 2 == 0, 1e4, -1e4) * np.sign(logits)).astype(np.float32)
  all_ignored = np.full_like(labels, IGN)
  empty = labels.copy()
  empty[0] = 0  # image 0: background only (empty foreground masks)
  fns = {}
  for name, fn in REGION_LOSSES.items():
    vg = lambda x, lab, fn=fn, **kw: jax.value_and_grad(lambda z: fn(z, lab, **kw))(x)
    fns[name, "ignored"] = lambda x, h, vg=vg: vg(x, all_ignored, ignore_index=IGN)
    fns[name, "huge_bf16"] = lambda x, h, vg=vg: vg(h, empty)
  got = jit_all({str(k): f for k, f in fns.items()}, logits, bf16(huge))
  assert_finite(got)
  for name in REGION_LOSSES:
    value, grad = got[str((name, "ignored"))]
    assert value == 0 and not np.any(np.asarray(grad)), name
    assert got[str((name, "huge_bf16"))][0].dtype == jnp.float32


def test_no_retrace_when_ignored_pixels_change():
  logits, labels, _ = _sample(9)
  fn, counter = jit_counting(lambda x, y: (seg.dice_loss(x, y, ignore_index=IGN),
                                           seg.lovasz_softmax_loss(x, y, ignore_index=IGN)))
  rng = np.random.default_rng(0)
  for frac in (0.0, 0.3, 1.0):
    lab = np.where(rng.uniform(size=labels.shape) < frac, IGN, labels)
    assert_finite(fn(logits, lab))
  assert counter.count == 1


def test_vmap_and_check_grads():
  logits, _, ignored = _sample(10)
  fn = lambda x, y: seg.dice_loss(x, y, ignore_index=IGN, per_image=True)
  got = jit_all({"vmap": lambda x: jax.vmap(fn)(jnp.stack([x, x[::-1]]),
                                              np.stack([ignored, ignored[::-1]])),
                 "one": lambda x: fn(x, ignored), "two": lambda x: fn(x[::-1], ignored[::-1])},
                logits)
  np.testing.assert_allclose(got["vmap"], [got["one"], got["two"]], rtol=1e-5)
  # Central differences along a random direction (check_grads is slow on a busy CPU).
  direction = np.random.default_rng(1).normal(size=logits.shape).astype(np.float32)

  def directional(x, f=lambda z: seg.tversky_loss(z, ignored, ignore_index=IGN, gamma=2.0,
                                                   beta=0.8), h=1e-2):
    numeric = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    return numeric, jnp.vdot(jax.grad(f)(x), direction)

  numeric, analytic = jax.jit(directional)(logits)
  np.testing.assert_allclose(analytic, numeric, rtol=1e-2, atol=1e-4)


def test_reductions_weights_and_binary_reading():
  logits, labels, _ = _sample(11)
  image_w = np.array([1.0, 3.0], np.float32)
  got = jit_all({
      "none": lambda x: seg.dice_loss(x, labels, per_image=True, reduction="none"),
      "sum": lambda x: seg.dice_loss(x, labels, per_image=True, reduction="sum"),
      "weighted": lambda x: seg.dice_loss(x, labels, per_image=True, weight=image_w),
      "gdl": lambda x: seg.generalized_dice_loss(x, labels, per_image=True, reduction="none"),
      "lovasz": lambda x: seg.lovasz_softmax_loss(x, labels, reduction="none"),
      "hinge": lambda x: seg.lovasz_hinge_loss(x[..., 0], labels, per_image=True,
                                               reduction="none"),
      "binary": lambda x: seg.dice_loss(x[..., :1], labels, activation="sigmoid"),
      "binary_nobg": lambda x: seg.dice_loss(x[..., :1], labels, activation="sigmoid",
                                             include_background=False),
      "binary_dense": lambda x: seg.dice_loss(x[..., :1], (labels == 1)[..., None] * 1.0,
                                              activation="sigmoid"),
  }, logits)
  assert got["none"].shape == (B, C)
  np.testing.assert_allclose(got["sum"], got["none"].sum(), rtol=1e-6)
  np.testing.assert_allclose(got["weighted"], (got["none"] * image_w[:, None]).sum() / (B * C),
                             rtol=1e-6)
  assert got["gdl"].shape == (B,) and got["lovasz"].shape == (C,) and got["hinge"].shape == (B,)
  # C == 1 reads labels as binary (1 = foreground) and keeps its channel.
  np.testing.assert_allclose(got["binary"], got["binary_dense"], rtol=1e-6)
  np.testing.assert_allclose(got["binary_nobg"], got["binary_dense"], rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: seg.dice_loss(x, y, reduction="avg"), "reduction"),
    (lambda x, y: seg.dice_loss(x, y, classes="some"), "classes"),
    (lambda x, y: seg.dice_loss(x, y, activation="relu"), "activation"),
    (lambda x, y: seg.dice_loss(x, y, class_weight=[1.0, 2.0]), "class_weight"),
    (lambda x, y: seg.dice_loss(x[..., :1], y), "sigmoid"),
    (lambda x, y: seg.dice_loss(x, y[0]), "labels of shape"),
    (lambda x, y: seg.dice_loss(x, np.eye(C)[y], ignore_index=IGN), "where="),
    (lambda x, y: seg.generalized_dice_loss(x, y, weight_type="log"), "weight_type"),
    (lambda x, y: seg.lovasz_hinge_loss(x, y), "lovasz_hinge_loss needs"),
])
def test_mistakes_raise_while_tracing(call, match):
  logits, labels, _ = _sample(11)
  # eval_shape traces without computing: the checks run at trace time
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: call(logits, labels))


def test_axis_name_pools_over_devices():
  logits, labels, ignored = _sample(13)
  x = np.concatenate([logits, logits[:, ::-1]])
  y = np.concatenate([ignored, labels[:, ::-1]])
  mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
  fns = {
      "dice": functools.partial(seg.dice_loss, ignore_index=IGN, classes="present"),
      "gdl": functools.partial(seg.generalized_dice_loss, ignore_index=IGN),
      "tversky_per_image": functools.partial(seg.tversky_loss, ignore_index=IGN, per_image=True,
                                             classes="present"),
  }
  sharded = jax.jit(jax.shard_map(
      lambda a, b: {k: jax.lax.pmean(f(a, b, axis_name="d"), "d") for k, f in fns.items()},
      mesh=mesh, in_specs=PartitionSpec("d"), out_specs=PartitionSpec()))(x, y)
  whole = jit_all({k: functools.partial(f, labels=y) for k, f in fns.items()}, x)
  for k in fns:
    np.testing.assert_allclose(sharded[k], whole[k], rtol=1e-5, err_msg=k)


def test_public_exports():
  for name in ("dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
               "lovasz_softmax_loss", "lovasz_hinge_loss", "mask_loss",
               "combined_segmentation_loss", "focal_dice_loss"):
    assert getattr(jaxloss, name) is getattr(seg, name)


# ----------------------------------------------------------------------------- with CE and focal

def np_ce_focal(logits, labels, *, ignore=None, gamma=0.0, alpha=None, class_weight=None):
  """Per-pixel -alpha_y (1 - p_y)^gamma log p_y; returns (sum, count) of the torch-style mean."""
  logp = np.log(np_softmax(logits.astype(np.float64)))
  keep = (labels >= 0) & (labels < logits.shape[-1]) & (labels != ignore)
  lab = np.where(keep, labels, 0)
  logp_y = np.take_along_axis(logp, lab[..., None], -1)[..., 0]
  loss = -((1 - np.exp(logp_y)) ** gamma) * logp_y
  if alpha is not None:
    loss = loss * np.asarray(alpha)[lab]
  w = np.ones(labels.shape) if class_weight is None else np.asarray(class_weight)[lab]
  return (loss * w * keep).sum(), (w * keep).sum()


def test_combined_and_focal_dice_match_numpy():
  logits, _, ignored = _sample(14)
  cw = [0.5, 1.0, 2.0, 4.0]
  got = jit_all({
      "combined": functools.partial(seg.combined_segmentation_loss, labels=ignored,
                                    ce_weight=0.7, dice_weight=0.4, class_weight=cw,
                                    ignore_index=IGN, dice_smooth=0.5),
      "focal_dice": functools.partial(seg.focal_dice_loss, labels=ignored, focal_gamma=1.5,
                                      focal_weight=0.6, dice_weight=0.3, dice_smooth=0.5,
                                      class_weight=cw, ignore_index=IGN),
      "focal0": functools.partial(jaxloss.softmax_focal_loss, labels=ignored, gamma=0.0,
                                  ignore_index=IGN),
      "ce": functools.partial(jaxloss.cross_entropy, labels=ignored, ignore_index=IGN),
      "combined_sum": functools.partial(seg.combined_segmentation_loss, labels=ignored,
                                        ce_weight=0.7, dice_weight=0.4, class_weight=cw,
                                        ignore_index=IGN, dice_smooth=0.5, reduction="sum"),
      "focal_dice_avg": functools.partial(seg.focal_dice_loss, labels=ignored, focal_gamma=1.5,
                                          focal_weight=0.6, dice_weight=0.3, dice_smooth=0.5,
                                          class_weight=cw, ignore_index=IGN, avg_factor=10.0),
  }, logits)
  i, p, t, m = np_stats(logits, ignored, ignore=IGN)
  dice = np_mean(1 - (2 * i + 0.5) / (p + t + 0.5), m, "all", cw)
  ce_sum, ce_count = np_ce_focal(logits, ignored, ignore=IGN, class_weight=cw)
  np.testing.assert_allclose(got["combined"], 0.7 * ce_sum / ce_count + 0.4 * dice, rtol=2e-5)
  focal_sum, count = np_ce_focal(logits, ignored, ignore=IGN, gamma=1.5, alpha=cw)
  np.testing.assert_allclose(got["focal_dice"], 0.6 * focal_sum / count + 0.3 * dice, rtol=2e-5)
  np.testing.assert_allclose(got["focal0"], got["ce"], rtol=1e-6)  # focal gamma=0 == CE
  np.testing.assert_allclose(got["combined_sum"], 0.7 * ce_sum + 0.4 * dice, rtol=2e-5)
  np.testing.assert_allclose(got["focal_dice_avg"], 0.6 * focal_sum / 10.0 + 0.3 * dice,
                             rtol=2e-5)
  with pytest.raises(ValueError, match="'mean' or 'sum'"):
    seg.combined_segmentation_loss(logits, ignored, reduction="none")


def test_pixelwise_focal_matches_monai():
  """MONAI FocalLoss(use_softmax=True, to_onehot_y=True, gamma=g, alpha=a) is elementwise over
  [B, C, H, W] with one nonzero channel: its channel sum is softmax_focal_loss(gamma=g,
  alpha=[1-a, a, ..., a], reduction="none") and its "mean" is ours divided by C."""
  x = MONAI["logits"].astype(np.float32)
  y = MONAI["labels"]
  focal = jaxloss.build_loss(dict(type="FocalLossPixelwise", gamma=2.0))
  focal_a = jaxloss.build_loss(dict(type="FocalLossPixelwise", gamma=2.0,
                                    alpha=[0.75, 0.25, 0.25, 0.25]))
  got = jit_all({"none": lambda z: focal(z, y, reduction_override="none"),
                 "mean": lambda z: focal(z, y),
                 "none_a": lambda z: focal_a(z, y, reduction_override="none"),
                 "mean_a": lambda z: focal_a(z, y)}, x)
  np.testing.assert_allclose(got["none"], MONAI["focal64_softmax_anone"].sum(-1), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(got["none_a"], MONAI["focal64_softmax_a025"].sum(-1), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(got["mean"] / C, MONAI["focal_softmax_anone_mean"], rtol=1e-4)
  np.testing.assert_allclose(got["mean_a"] / C, MONAI["focal_softmax_a025_mean"], rtol=1e-4)


def test_mask_loss_matches_numpy():
  rng = np.random.default_rng(15)
  x = rng.normal(0, 3, (3, 5, 4)).astype(np.float32)
  m = (rng.uniform(size=x.shape) < 0.3).astype(np.float32)
  got = jax.jit(lambda z: seg.mask_loss(z, m, pos_weight=2.5))(x)
  xd = x.astype(np.float64)
  log_sig, log_one_minus = -np.logaddexp(0, -xd), -np.logaddexp(0, xd)
  expect = -(2.5 * m * log_sig + (1 - m) * log_one_minus).mean()
  np.testing.assert_allclose(got, expect, rtol=2e-5)
  with pytest.raises(ValueError, match="mask_loss"):
    seg.mask_loss(x, m[0])


QUICK_CONFIG = dict(num_classes=4, ignore_index=IGN, use_class_weighting=True, focal_gamma=2.0,
                    focal_weight=0.5, dice_weight=0.5, dice_smooth=1.0, tversky_alpha=0.3,
                    tversky_beta=0.7)


def test_quick_reference_scenario_every_loss_type_under_jit():
  """80/10/7/3 class split with ignored pixels: one config dict for every quick-reference type
  (and the two rank-based losses) builds a loss that is finite, with finite gradients, and
  equal to the direct call with the config's keywords and inverse-frequency weights."""
  rng = np.random.default_rng(16)
  labels = rng.choice(4, size=(2, 16, 16), p=[0.8, 0.1, 0.07, 0.03])
  labels[0][labels[0] == 3] = 1  # the rare class is absent from image 0
  labels = np.where(rng.uniform(size=labels.shape) < 0.05, IGN, labels)
  logits = rng.normal(0, 1, (2, 16, 16, 4)).astype(np.float32)
  losses = {kind: jaxloss.build_loss(dict(type=kind, **QUICK_CONFIG))
            for kind in QUICK_REFERENCE}
  weights = jaxloss.class_weights(labels, 4, ignore_index=IGN)
  losses["weighted_ce_explicit"] = functools.partial(jaxloss.cross_entropy, class_weight=weights,
                                                     ignore_index=IGN)
  losses["dice_explicit"] = functools.partial(seg.dice_loss, class_weight=weights,
                                              ignore_index=IGN)
  losses["focal_explicit"] = functools.partial(jaxloss.softmax_focal_loss, gamma=2.0,
                                               alpha=weights, ignore_index=IGN)
  losses["tversky_explicit"] = functools.partial(seg.tversky_loss, alpha=0.3, beta=0.7,
                                                 class_weight=weights, ignore_index=IGN)
  losses["focal_dice_explicit"] = functools.partial(
      seg.focal_dice_loss, focal_gamma=2.0, focal_weight=0.5, dice_weight=0.5,
      class_weight=weights, ignore_index=IGN)
  for name in ("GeneralizedDiceLoss", "LovaszSoftmaxLoss"):
    losses[name] = jaxloss.build_loss(dict(type=name, ignore_index=IGN))
  got = jit_all({k: lambda z, f=f, k=k: (jax.value_and_grad(lambda v: f(v, labels))(z)
                                        if "explicit" not in k else (f(z, labels), 0.0))
                 for k, f in losses.items()}, logits)
  assert_finite(got)
  np.testing.assert_allclose(got["weighted_ce"][0], got["weighted_ce_explicit"][0], rtol=1e-6)
  for kind in ("dice", "focal", "tversky", "focal_dice"):
    np.testing.assert_allclose(got[kind][0], got[f"{kind}_explicit"][0], rtol=1e-6, err_msg=kind)
  with pytest.raises(ValueError, match="num_classes"):
    jax.eval_shape(lambda: losses["dice"](logits[..., :3], labels))
  with pytest.raises(ValueError, match="valid keywords"):
    jaxloss.build_loss(dict(type="dice", smooth=1.0))
