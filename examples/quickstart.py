"""A first jaxloss run: a jitted loss, its gradient and a config-built Flax wrapper."""

import jax
import jax.numpy as jnp

import jaxloss


def main():
  key = jax.random.key(0)
  pred = jax.random.normal(key, (8, 4))
  target = jnp.zeros((8, 4))
  valid = jnp.arange(8) < 6  # the last two rows are padding

  loss_fn = jax.jit(lambda p: jaxloss.smooth_l1_loss(p, target, beta=0.5, where=valid))
  value, grad = jax.value_and_grad(loss_fn)(pred)
  print(f"smooth_l1_loss = {float(value):.4f}; grad of padded rows = {grad[6:].sum():.1f}")

  loss = jaxloss.build_loss(dict(type="SmoothL1Loss", beta=0.5, loss_weight=2.0), backend="nnx")
  print(f"{loss.declaration.name}(loss_weight=2.0) = {float(loss(pred, target)):.4f}")
  print("registered losses:", ", ".join(jaxloss.list_losses()))


if __name__ == "__main__":
  main()
