"""Classification losses: cross entropy and the focal family, class axis last."""

from jaxloss.classification.entropy import binary_cross_entropy, cross_entropy
from jaxloss.classification.focal import (
    gaussian_focal_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from jaxloss.classification.quality import (
    distribution_focal_loss,
    quality_focal_loss,
    varifocal_loss,
)

__all__ = ["binary_cross_entropy", "cross_entropy", "distribution_focal_loss",
           "gaussian_focal_loss", "quality_focal_loss", "sigmoid_focal_loss",
           "softmax_focal_loss", "varifocal_loss"]
