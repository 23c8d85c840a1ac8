"""One-pass ``custom_vjp`` kernels, each beside its plain-autodiff path.

:mod:`~jaxloss._src.kernels.core` holds the switch (:func:`fused_kernels`) and the kernel
builder; :mod:`~jaxloss._src.kernels.sigmoid`, :mod:`~jaxloss._src.kernels.softmax` and
:mod:`~jaxloss._src.kernels.fcos` the kernels of the sigmoid losses, the softmax losses and
FCOS's summed head losses.
"""

from jaxloss._src.kernels.core import fused_enabled, fused_kernels, set_fused_kernels
from jaxloss._src.kernels.sigmoid import binary_cross_entropy, sigmoid_focal, sigmoid_focal_sum
from jaxloss._src.kernels.softmax import (
    region_kernel_pays,
    softmax_cross_entropy,
    softmax_region_stats,
)

__all__ = ["binary_cross_entropy", "fused_enabled", "fused_kernels", "region_kernel_pays",
           "set_fused_kernels", "sigmoid_focal", "sigmoid_focal_sum", "softmax_cross_entropy",
           "softmax_region_stats"]
