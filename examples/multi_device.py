"""The optax_pipeline loss and gradients on several devices, equal to one device.

Two ways to run a data-parallel step over a ``batch`` mesh axis:

1. ``jax.sharding``: the batch is placed with ``NamedSharding(mesh,
   P("batch"))``, the parameters are replicated, and the unchanged jitted
   function is partitioned by the compiler.
2. ``jax.shard_map``: each device computes the loss of its shard with
   ``axis_name="batch"``, so that the ``"mean"`` divisor is ``pmean``'d; the
   ``pmean`` of the per-device losses and gradients is then the whole-batch
   loss and gradient.

Both are compared with the single-device value and gradients. On a CPU the
devices are forced host devices (``--xla_force_host_platform_device_count``,
set here before jax is imported unless XLA_FLAGS already sets it).

Run::

  python examples/multi_device.py [--devices 8] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys


def _force_host_devices(argv) -> int:
  n = 8
  if "--devices" in argv:
    n = int(argv[argv.index("--devices") + 1])
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
  return n


_force_host_devices(sys.argv)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxloss  # noqa: E402

try:
  from jax import shard_map  # noqa: E402
except ImportError:  # jax < 0.7
  from jax.experimental.shard_map import shard_map  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from optax_pipeline import (  # noqa: E402
    FEATURES,
    BoxClassifier,
    make_batch,
    train_step,
)
from optax_pipeline import loss_fn as config_loss_fn  # noqa: E402


def batch_mesh(n: int):
  """A 1-D ``batch`` mesh whose sharding the compiler propagates (``Auto`` axis)."""
  if hasattr(jax.sharding, "AxisType"):
    return jax.make_mesh((n,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
  return jax.make_mesh((n,), ("batch",))


def loss_fn(model, x, boxes, labels, valid, axis_name=None):
  """optax_pipeline's config loss (2 * GIoU + sigmoid focal) as functions, so that
  each device can pass ``axis_name``."""
  pred_boxes, logits = model(x)
  box = jaxloss.giou_loss(pred_boxes, boxes, where=valid, axis_name=axis_name)
  cls = jaxloss.sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0, where=valid,
                                   axis_name=axis_name)
  return 2.0 * box + cls


@nnx.jit
def value_and_grad(model, x, boxes, labels, valid):
  """optax_pipeline's loss (built by ``build_loss``) and its gradients."""
  (loss, _), grads = nnx.value_and_grad(config_loss_fn, has_aux=True)(model, x, boxes,
                                                                       labels, valid)
  return loss, grads


def sharded_value_and_grad(mesh, model, batch):
  """GSPMD: shard the batch, replicate the model, call the same jitted function.

  No ``axis_name`` is needed: the compiler sees the whole batch and inserts the
  reductions of the mean's sum and count itself.
  """
  data = NamedSharding(mesh, P("batch"))
  batch = [jax.device_put(a, data) for a in batch]
  graphdef, params = nnx.split(model)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  return value_and_grad(nnx.merge(graphdef, params), *batch)


def shard_map_value_and_grad(mesh, model, batch):
  """shard_map: per-device loss with ``axis_name``, ``pmean``'d over devices.

  The gradient of that mean with respect to the replicated parameters is the
  all-reduced (averaged) data-parallel gradient (shard_map's ``check_vma``
  semantics, jax >= 0.7, insert the reduction).
  """
  graphdef, params = nnx.split(model)
  batch = [jax.device_put(a, NamedSharding(mesh, P("batch"))) for a in batch]

  def per_device(params, x, boxes, labels, valid):
    local = lambda p: loss_fn(nnx.merge(graphdef, p), x, boxes, labels, valid,
                              axis_name="batch")
    return jax.value_and_grad(lambda p: jax.lax.pmean(local(p), "batch"))(params)

  mapped = shard_map(per_device, mesh=mesh, in_specs=(P(), *[P("batch")] * 4),
                     out_specs=P())
  return jax.jit(mapped)(params, *batch)


def relative_difference(a, b) -> float:
  """max |a - b| / max |b| over the leaves of two pytrees."""
  diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  return diff / max(max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b)), 1e-12)


def train_sharded(mesh, model, rng, teacher, steps: int) -> float:
  """optax_pipeline's unchanged ``train_step`` on batches sharded over the mesh."""
  optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                               optax.adamw(3e-3)), wrt=nnx.Param)
  data = NamedSharding(mesh, P("batch"))
  for _ in range(steps):
    batch = [jax.device_put(a, data) for a in make_batch(rng, teacher)]
    loss, _ = train_step(model, optimizer, *batch)
  return float(loss)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", type=int, default=8, help="forced host devices on CPU")
  p.add_argument("--quick", action="store_true", help="fewer training steps")
  args = p.parse_args(argv)
  n = len(jax.devices())
  mesh = batch_mesh(n)
  print(f"{n} devices ({jax.devices()[0].platform}); mesh {dict(mesh.shape)}")

  rng = np.random.default_rng(0)
  teacher = rng.normal(size=(FEATURES, 7)).astype(np.float32) / np.sqrt(FEATURES)
  model = BoxClassifier(rngs=nnx.Rngs(0))
  batch = make_batch(rng, teacher)

  value, grads = value_and_grad(model, *batch)
  results = {}
  for name, fn in (("jax.sharding (NamedSharding, jit)", sharded_value_and_grad),
                   ("shard_map (axis_name='batch')", shard_map_value_and_grad)):
    v, g = fn(mesh, model, batch)
    dv, dg = abs(float(v) - float(value)), relative_difference(g, grads)
    ok = bool(np.isclose(float(v), float(value), rtol=1e-5, atol=1e-6) and dg < 1e-5)
    results[name] = dict(value=float(v), value_diff=dv, grad_max_diff=dg, equal=ok)
    print(f"{name:<36} loss {float(v):.6f} (single device {float(value):.6f}); "
          f"|value diff| {dv:.1e}, grads max |diff| / max |grad| {dg:.1e} -> "
          f"{'equal' if ok else 'DIFFERENT'}")

  final = train_sharded(mesh, model, rng, teacher, 10 if args.quick else 100)
  print(f"sharded training: loss after {10 if args.quick else 100} steps {final:.4f}")
  if not all(r["equal"] for r in results.values()):
    raise SystemExit("multi-device results differ from the single-device ones")
  return results


if __name__ == "__main__":
  main()
