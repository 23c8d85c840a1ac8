"""Issue 13, classification half: no silently wrong number.

Each test failed on the code before its fix. References are float64 numpy
written from the papers' formulas (and their derivatives), or finite
differences of such a formula; none calls jaxloss.
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss._src import kernels as _fused
from jaxloss.segmentation.weights import class_counts
from tests.utils import assert_finite

RNG = np.random.default_rng(13)


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_softplus(x):
  return np.logaddexp(0.0, np.float64(x))


def np_sigmoid(x):
  return 1 / (1 + np.exp(-np.float64(x)))


# ------------------------------------------------- 1. labels of any integer dtype

DTYPES = (np.uint8, np.int8, np.int16, np.int32)


def _label_outputs(logits, labels, cw_labels):
  """Every label-taking classification function, on the same labels."""
  kw = dict(reduction="none")
  return {
      "ce": jaxloss.cross_entropy(logits, labels, ignore_index=-100, **kw),
      "ce_cw": jaxloss.cross_entropy(logits, labels, ignore_index=-100,
                                     class_weight=jnp.linspace(0.5, 2, logits.shape[-1])),
      "softmax_focal": jaxloss.softmax_focal_loss(logits, labels, ignore_index=-100, **kw),
      "sigmoid_focal": jaxloss.sigmoid_focal_loss(logits, labels, **kw),
      "sigmoid_focal_sum": jaxloss.sigmoid_focal_loss(logits, labels, reduction="sum"),
      "bce": jaxloss.binary_cross_entropy(logits, labels, **kw),
      "qfl": jaxloss.quality_focal_loss(logits, labels, jnp.full(labels.shape, 0.7), **kw),
      "mmdet_ce": jaxloss.build_loss(dict(type="CrossEntropyLoss", ignore_index=-100))(
          logits, labels, reduction_override="none"),
      "mmdet_bce": jaxloss.build_loss(dict(type="CrossEntropyLoss", use_sigmoid=True,
                                           ignore_index=-100))(logits, labels),
      "counts": class_counts(cw_labels, logits.shape[-1], ignore_index=-100),
      "weights": jaxloss.class_weights(cw_labels, logits.shape[-1], ignore_index=-100),
  }


def _labels_for(dtype, num_classes):
  """Labels representable in ``dtype`` ([0, 127] for int8), -100 where signed."""
  info = np.iinfo(dtype)
  values = np.array([0, 5, min(info.max, num_classes - 1), 127, -100, 64])
  if info.min == 0:
    values = np.where(values < 0, 150, values)  # a valid class instead of -100
  return values


@pytest.mark.parametrize("num_classes", [300, 200])
def test_label_dtypes_give_identical_results(num_classes):
  """300 classes: uint8 wrapped num_classes to 44; int8 and 200: -100 became 156."""
  logits = RNG.normal(size=(6, num_classes)).astype(np.float32)
  run = jax.jit(_label_outputs)
  for dtype in DTYPES:
    labels = _labels_for(dtype, num_classes)
    out = run(logits, labels.astype(dtype), labels.astype(dtype))
    wide = run(logits, labels.astype(np.int32), labels.astype(np.int32))
    for key in out:
      np.testing.assert_array_equal(out[key], wide[key], err_msg=f"{dtype.__name__} {key}")
    # ... and the int32 result is the formula's.
    keep = labels != -100
    nll = -np.take_along_axis(np_log_softmax(logits), np.where(keep, labels, 0)[:, None],
                              -1)[:, 0]
    np.testing.assert_allclose(wide["ce"], np.where(keep, nll, 0), rtol=1e-5)
    counts = np.bincount(labels[keep], minlength=num_classes)
    np.testing.assert_array_equal(wide["counts"], counts)


# ------------------------------------------- 2. BCE and focal without cancellation

MAGNITUDES = (5.0, 10.0, 20.0, 50.0, 100.0)
X = np.array([s * m for m in MAGNITUDES for s in (1, -1)], np.float32)[:, None]
TINY = 1e-37  # float32 flushes subnormals: a reference below this is 0 here


def np_bce_and_grad(x, t):
  x = np.float64(x)
  value = t * np_softplus(-x) + (1 - t) * np_softplus(x)
  # d/dx = sigmoid(x) - t, written as p (1 - t) - q t (exact in float64 too)
  return value, np_sigmoid(x) * (1 - t) - np_sigmoid(-x) * t


def np_focal_and_grad(x, t, alpha, gamma):
  """Lin et al. (arXiv:1708.02002) eq. 5 for binary t, and its derivative."""
  x = np.float64(x)
  p, q = np_sigmoid(x), np_sigmoid(-x)
  value = np.where(t == 1, alpha * q ** gamma * np_softplus(-x),
                   (1 - alpha) * p ** gamma * np_softplus(x))
  grad = np.where(t == 1, -alpha * q ** gamma * (gamma * p * np_softplus(-x) + q),
                  (1 - alpha) * p ** gamma * (gamma * q * np_softplus(x) + p))
  return value, grad


def _check(value, grad, ref_value, ref_grad):
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=TINY)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=TINY)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_bce_and_focal_exact_at_confident_logits(fused, t):
  """BCE was softplus(x) - t x: 4.578e-5 instead of 4.540e-5 at t=1, x=10; 0 for x>=15."""
  targets = np.full_like(X, t)
  labels = np.full(X.shape[:1], 0 if t else 1, np.int32)  # C == 2 below: label 1 = t 0
  x2 = np.concatenate([X, -X], axis=1)  # column 0 is X; with labels, column 1 only adds

  def losses(x, x2):
    bce = lambda x: jaxloss.binary_cross_entropy(x, targets, reduction="none")
    focal = lambda x: jaxloss.sigmoid_focal_loss(x, targets, alpha=0.25, gamma=2.0,
                                                 reduction="none")
    focal_labels = lambda x: jaxloss.sigmoid_focal_loss(x, labels, alpha=0.25, gamma=2.0,
                                                        reduction="none")[:, 0]
    bce_w = lambda x: jaxloss.binary_cross_entropy(x, targets, pos_weight=jnp.ones(1),
                                                   reduction="none")
    out = {}
    for name, fn in (("bce", bce), ("focal", focal), ("bce_w", bce_w)):
      out[name] = fn(x), jax.grad(lambda x, fn=fn: jnp.sum(fn(x)))(x)
    out["focal_labels"] = (focal_labels(x2), jax.grad(lambda x: jnp.sum(focal_labels(x)))(x2))
    # the one-pass sum of the integer-label path (RetinaNet / FCOS)
    summed = lambda x: jaxloss.sigmoid_focal_loss(x, labels, alpha=0.25, gamma=2.0,
                                                  reduction="sum")
    out["focal_sum"] = summed(x2), jax.grad(summed)(x2)
    return out

  with _fused.fused_kernels(fused):
    out = jax.jit(losses)(X, x2)
  bce, dbce = np_bce_and_grad(X, t)
  _check(*out["bce"], bce, dbce)
  _check(*out["bce_w"], bce, dbce)
  focal, dfocal = np_focal_and_grad(X, t, 0.25, 2.0)
  _check(*out["focal"], focal, dfocal)
  value, grad = out["focal_labels"]
  _check(value, grad[:, :1], focal[:, 0], dfocal)
  other, dother = np_focal_and_grad(-X, 1.0 - t, 0.25, 2.0)  # column 1: the other class
  np.testing.assert_allclose(out["focal_sum"][0], focal.sum() + other.sum(), rtol=1e-5)
  _check(out["focal_sum"][1][:, :1], out["focal_sum"][1][:, 1:], dfocal, dother)


# ------------------------------------------------------- 3. hessian of the focal loss


def np_focal_second_derivative(x, t, alpha, gamma):
  """d^2/dx^2 of np_focal_and_grad's loss, by hand: with s = softplus(x), s' = p, p' = pq."""
  x = np.float64(x)
  p, q = np_sigmoid(x), np_sigmoid(-x)
  pos = alpha * q ** gamma * p * (gamma ** 2 * p * np_softplus(-x)
                                  - gamma * q * np_softplus(-x) + (2 * gamma + 1) * q)
  neg = (1 - alpha) * p ** gamma * q * (gamma ** 2 * q * np_softplus(x)
                                        - gamma * p * np_softplus(x) + (2 * gamma + 1) * p)
  return np.where(t == 1, pos, neg)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_hessian_finite_and_exact(gamma):
  """The fused backward pass divided by z = 1 - p_t: its derivative overflowed (NaN/-inf)."""
  x = np.array([[50.0, -50.0, 60.0, -60.0, 80.0, -80.0, 100.0, -100.0]], np.float32)
  t = np.array([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]], np.float32)
  loss = lambda x, t: jaxloss.sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum")
  hessian = jax.jit(jax.hessian(loss))(x, t)
  assert_finite(hessian)
  diagonal = np.diagonal(np.asarray(hessian)[0, :, 0, :])
  np.testing.assert_array_equal(np.asarray(hessian)[0, :, 0, :], np.diag(diagonal))
  np.testing.assert_allclose(diagonal, np_focal_second_derivative(x[0], t[0], 0.25, gamma),
                             rtol=1e-4, atol=TINY)
  edges = np.array([0, 1, 6, 7])  # +-50, +-100: the plain float32 path is finite there
  with _fused.fused_kernels(False):
    plain = np.diagonal(np.asarray(jax.jit(jax.hessian(loss))(x, t))[0, :, 0, :])
  np.testing.assert_allclose(diagonal[edges], plain[edges], rtol=1e-5, atol=TINY)


# ------------------------------------------------- 4. per-class vectors of the wrong length


def test_per_class_vectors_of_the_wrong_length_raise():
  logits, labels = np.zeros((4, 3), np.float32), np.array([0, 1, 2, 2])
  for fused in (True, False):
    with _fused.fused_kernels(fused), pytest.raises(ValueError, match="`class_weight`.*3"):
      jaxloss.cross_entropy(logits, labels, class_weight=jnp.array([1.0, 1.0]))
  with pytest.raises(ValueError, match="`class_weight`"):
    jaxloss.cross_entropy(logits, np.full((4, 3), 1 / 3, np.float32), class_weight=np.ones(4))
  with pytest.raises(ValueError, match="`alpha`.*3"):
    jaxloss.softmax_focal_loss(logits, labels, alpha=np.array([0.25, 0.75]))
  with pytest.raises(ValueError, match="`class_weight`"):
    jaxloss.build_loss(dict(type="CrossEntropyLoss", use_mask=True, class_weight=[1.0, 2.0]))(
        np.zeros((4, 2, 2, 3), np.float32), np.zeros((4, 2, 2), np.float32), labels)
  # a scalar alpha and a [C] one still work
  jaxloss.softmax_focal_loss(logits, labels, alpha=0.5)
  jaxloss.softmax_focal_loss(logits, labels, alpha=np.ones(3))


# --------------------------------------------------- 5. targets read by rank and dtype


def test_ambiguous_targets_raise():
  logits = RNG.normal(size=(4, 4)).astype(np.float32)
  column = np.array([[0], [2], [1], [3]], np.int32)  # labels [N, 1]: were targets 0..3
  for fn in (jaxloss.sigmoid_focal_loss, jaxloss.binary_cross_entropy):
    with pytest.raises(ValueError, match=r"integer targets of shape \(4, 1\)"):
      fn(logits, column)
    # float class indices [N] with N == C: were read as one probability row; a wrong
    # dtype, so TypeError as in every loss (tests/classification/test_classification_errors.py)
    with pytest.raises(TypeError, match=r"`targets` of shape \(4,\).*float dtype"):
      fn(logits, np.array([0.0, 2.0, 1.0, 3.0], np.float32))
  with pytest.raises(TypeError, match=r"`labels` of shape \(4,\).*float dtype"):
    jaxloss.cross_entropy(logits, np.array([0.0, 2.0, 1.0, 3.0], np.float32))
  with pytest.raises(TypeError, match="float dtype"):
    jaxloss.softmax_focal_loss(logits, np.array([0.0, 2.0, 1.0, 3.0], np.float32))
  # unambiguous readings still hold: labels [N], 0/1 integer targets [N, C], and a
  # single channel whose integer targets [N, 1] are binary
  onehot = np.eye(4, dtype=np.int32)[column[:, 0]]
  np.testing.assert_allclose(jaxloss.sigmoid_focal_loss(logits, column[:, 0]),
                             jaxloss.sigmoid_focal_loss(logits, onehot), rtol=1e-6)
  binary = np.array([[1], [0], [1], [1]], np.int32)
  np.testing.assert_allclose(jaxloss.binary_cross_entropy(logits[:, :1], binary),
                             jaxloss.binary_cross_entropy(logits[:, :1], binary[:, 0]),
                             rtol=1e-6)


# --------------------------------------------------- 6. gradient of the class weights


def np_ce_mean(x, y, w, eps, keep):
  """torch's class-weighted, smoothed CE mean over the kept rows (float64)."""
  logp = np_log_softmax(x)[keep]
  y = y[keep]
  nll = -logp[np.arange(len(y)), y]
  per = (1 - eps) * w[y] * nll - eps / x.shape[-1] * (logp * w).sum(-1)
  return per.sum() / w[y].sum(), per.sum()


@pytest.mark.parametrize("fused", [True, False])
def test_class_weight_gradient_matches_finite_differences(fused):
  """The fused kernel gave class_weight no gradient but the divisor's ([-0.135, ...])."""
  x = RNG.normal(size=(7, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 1, 255, 0, 1])
  w = np.array([0.5, 2.0, 1.0], np.float32)
  keep = y != 255
  safe_y = np.where(keep, y, 0)

  def losses(w):
    kw = dict(class_weight=w, ignore_index=255, label_smoothing=0.1)
    return (jaxloss.cross_entropy(x, y, **kw), jaxloss.cross_entropy(x, y, reduction="sum", **kw))

  with _fused.fused_kernels(fused):
    grads = jax.jit(jax.jacrev(losses))(w)
  h = 1e-6
  for k, grad in enumerate(grads):
    numeric = [(np_ce_mean(x, safe_y, np.float64(w) + h * e, 0.1, keep)[k]
                - np_ce_mean(x, safe_y, np.float64(w) - h * e, 0.1, keep)[k]) / (2 * h)
               for e in np.eye(3)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_combined_segmentation_class_weight_gradient_is_the_plain_one():
  """The CE half of combined_segmentation_loss runs on the same fused kernel."""
  logits = RNG.normal(size=(2, 3, 3, 3)).astype(np.float32)
  labels = RNG.integers(0, 3, size=(2, 3, 3))
  labels[0, 0, :] = 255
  w = jnp.array([0.5, 2.0, 1.0])
  loss = lambda w: jaxloss.combined_segmentation_loss(logits, labels, class_weight=w,
                                                      ignore_index=255)
  grads = {}
  for fused in (True, False):
    with _fused.fused_kernels(fused):
      grads[fused] = jax.jit(jax.grad(loss))(w)
  np.testing.assert_allclose(grads[True], grads[False], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------ 8. class weights over devices


def test_class_weights_axis_name_counts_the_whole_batch(devices):
  """Each device used to weigh classes by its own shard's histogram."""
  mesh = Mesh(np.array(devices[:4]), ("data",))
  labels = np.array([0] * 9 + [1] * 3 + [2, 2, 255, 3])  # shards differ in their classes

  def per_device(y):
    return jaxloss.class_weights(y, 4, ignore_index=255, axis_name="data")[None]

  out = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"),
                              out_specs=P("data")))(labels)
  counts = np.array([9.0, 3.0, 2.0, 1.0])
  expected = (1 / counts) * 4 / (1 / counts).sum()  # "inverse", mean 1 over present classes
  for row in np.asarray(out):
    np.testing.assert_allclose(row, expected, rtol=1e-6)


# ------------------------------------------------ 10. hyper-parameters out of domain


@pytest.mark.parametrize("call,match", [
    (lambda x, t: jaxloss.sigmoid_focal_loss(x, t, alpha=1.5), r"`alpha` must be in \[0, 1\]"),
    (lambda x, t: jaxloss.sigmoid_focal_loss(x, t, alpha=-0.5), "`alpha`"),
    (lambda x, t: jaxloss.sigmoid_focal_loss(x, t, gamma=-1.0), "`gamma`"),
    (lambda x, t: jaxloss.sigmoid_focal_loss(x, t, gamma=float("nan")), "`gamma`"),
    (lambda x, t: jaxloss.gaussian_focal_loss(x * 0, t, alpha=-1.0), "`alpha`"),
    (lambda x, t: jaxloss.gaussian_focal_loss(x * 0, t, gamma=-2.0), "`gamma`"),
    (lambda x, t: jaxloss.varifocal_loss(x, t, alpha=-0.75), "`alpha`"),
    (lambda x, t: jaxloss.varifocal_loss(x, t, gamma=-2.0), "`gamma`"),
    (lambda x, t: jaxloss.softmax_focal_loss(x, np.zeros(2, np.int32), alpha=-1.0), "`alpha`"),
    (lambda x, t: jaxloss.quality_focal_loss(x, np.zeros(2, np.int32), np.ones(2), beta=-1.0),
     "`beta`"),
    (lambda x, t: jaxloss.binary_cross_entropy(x, t, label_smoothing=1.5), "`label_smoothing`"),
])
def test_hyperparameters_out_of_domain_raise(call, match):
  x, t = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match=match):
    call(x, t)


def test_torchvision_alpha_sentinel_still_disables_alpha():
  x = RNG.normal(size=(2, 3)).astype(np.float32)
  t = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
  np.testing.assert_array_equal(jaxloss.sigmoid_focal_loss(x, t, alpha=-1),
                                jaxloss.sigmoid_focal_loss(x, t, alpha=None))


# ------------------------------------------------ 11. set_fused_kernels is global


def test_set_fused_kernels_reaches_other_threads():
  seen = {}

  def worker(key):
    seen[key] = _fused.fused_enabled()
    if not seen[key]:  # forward mode only traces on the plain path
      seen[f"{key}_jvp"] = jax.jvp(lambda x: jaxloss.sigmoid_focal_loss(x, x * 0),
                                   (jnp.ones((2, 2)),), (jnp.ones((2, 2)),))[1]

  def in_thread(key):
    thread = threading.Thread(target=worker, args=(key,))
    thread.start()
    thread.join()

  jaxloss.set_fused_kernels(False)
  try:
    in_thread("global_off")
    with jaxloss.fused_kernels(True):  # a block is local to its thread ...
      assert _fused.fused_enabled()
      in_thread("block_elsewhere")
    assert not _fused.fused_enabled()
  finally:
    jaxloss.set_fused_kernels(True)
  with jaxloss.fused_kernels(False):  # ... and wins over the global setting inside it
    assert not _fused.fused_enabled()
    in_thread("global_on")
  assert seen["global_off"] is False and seen["block_elsewhere"] is False
  assert seen["global_on"] is True
  assert_finite(seen["global_off_jvp"])


# ---------------------------------------------- 14. quality focal loss keeps [..., C]


def test_quality_focal_loss_keeps_the_class_axis():
  x = RNG.normal(size=(3, 4)).astype(np.float32)
  labels, scores = np.array([1, 4, 0]), np.array([0.9, 0.5, 0.3], np.float32)
  t = np.eye(5)[labels][:, :4] * scores[:, None]
  s = np_sigmoid(x)
  per = np.abs(t - s) ** 2 * (t * np_softplus(-x) + (1 - t) * np_softplus(x))  # GFL eq. 6
  out = jaxloss.quality_focal_loss(x, labels, scores, reduction="none")
  assert out.shape == (3, 4)
  np.testing.assert_allclose(out, per, rtol=1e-5)
  np.testing.assert_allclose(jaxloss.quality_focal_loss(x, labels, scores), per.mean(),
                             rtol=1e-5)
  mmdet = jaxloss.build_loss(dict(type="QualityFocalLoss", beta=2.0))
  np.testing.assert_allclose(mmdet(x, labels, scores, reduction_override="none"), per.sum(-1),
                             rtol=1e-5)
  np.testing.assert_allclose(mmdet(x, labels, scores), per.sum(-1).mean(), rtol=1e-5)


# ------------------------------------------- 17. no NaN intermediate under debug_nans

_INF_ROWS = np.array([[1.0, 2.0, 3.0], [np.inf, 0.0, -np.inf], [0.5, -1.0, 2.0],
                      [np.inf, np.inf, np.inf]], np.float32)
_KEEP = np.array([True, False, True, False])
_LABELS = np.array([0, 255, 2, 255])
_NAN_FREE = {
    "ce_ignore": lambda x: jaxloss.cross_entropy(x, _LABELS, ignore_index=255),
    "ce_where": lambda x: jaxloss.cross_entropy(x, np.array([0, 1, 2, 1]), where=_KEEP),
    "ce_weighted_smoothed": lambda x: jaxloss.cross_entropy(
        x, _LABELS, ignore_index=255, class_weight=jnp.array([1.0, 2.0, 3.0]),
        label_smoothing=0.1),
    "mmdet_ce": lambda x: jaxloss.build_loss(dict(type="CrossEntropyLoss", ignore_index=255))(
        x, _LABELS),
    "softmax_focal": lambda x: jaxloss.softmax_focal_loss(x, _LABELS, ignore_index=255,
                                                          gamma=0.5),
    "sigmoid_focal": lambda x: jaxloss.sigmoid_focal_loss(x, np.array([0, 1, 2, 3]),
                                                          where=_KEEP, gamma=0.5),
    "sigmoid_focal_soft": lambda x: jaxloss.sigmoid_focal_loss(x, jnp.full((4, 3), 0.3),
                                                               where=_KEEP),
    "bce": lambda x: jaxloss.binary_cross_entropy(x, np.array([0, 1, 2, 3]), where=_KEEP),
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", sorted(_NAN_FREE))
def test_no_nan_intermediate_with_inf_logits_in_ignored_rows(name, fused):
  """Eager cross_entropy formed inf - inf in an ignored row (FloatingPointError)."""
  fn = jax.value_and_grad(_NAN_FREE[name])
  with jax.debug_nans(True), _fused.fused_kernels(fused):
    eager = fn(_INF_ROWS)
    jitted = jax.jit(fn)(_INF_ROWS)
  assert_finite((eager, jitted))
  np.testing.assert_array_equal(np.asarray(eager[1])[~_KEEP], 0.0)
  np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-6)
