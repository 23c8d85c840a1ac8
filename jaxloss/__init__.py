"""jaxloss: detection and segmentation losses for JAX.

Every loss is a pure function that works under ``jax.jit``, ``jax.vmap``,
``jax.grad`` and sharding, with static shapes. See DESIGN.md for the
conventions, :mod:`jaxloss.nnx` / :mod:`jaxloss.linen` for Flax wrappers and
:func:`build_loss` for config-driven construction.
"""

from jaxloss._fused import fused_kernels, set_fused_kernels
from jaxloss._reduce import reduce_loss
from jaxloss.regression import balanced_l1_loss, l1_loss, mse_loss, smooth_l1_loss
from jaxloss.registry import build_loss, list_losses

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # reduction and registry
    "reduce_loss",
    "build_loss",
    "list_losses",
    # fused kernels: plain-autodiff switch (forward-mode autodiff)
    "fused_kernels",
    "set_fused_kernels",
    # regression
    "l1_loss",
    "mse_loss",
    "smooth_l1_loss",
    "balanced_l1_loss",
]
