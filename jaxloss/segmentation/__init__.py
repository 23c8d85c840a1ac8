"""Segmentation losses: region (Dice .. Tversky), Lovász, composite, topology, boundary,
OHEM, MCC, and class weights."""

from jaxloss.segmentation.boundary import (
    boundary_loss,
    hausdorff_dt_loss,
    hausdorff_er_loss,
    signed_distance_map,
)
from jaxloss.segmentation.composite import combined_segmentation_loss, focal_dice_loss, mask_loss
from jaxloss.segmentation.lovasz import lovasz_hinge_loss, lovasz_softmax_loss
from jaxloss.segmentation.mcc import mcc_loss
from jaxloss.segmentation.ohem import ohem_cross_entropy
from jaxloss.segmentation.region import (
    dice_loss,
    generalized_dice_loss,
    jaccard_loss,
    tversky_loss,
)
from jaxloss.segmentation.topology import cldice_loss, dice_cldice_loss, soft_skeleton
from jaxloss.segmentation.weights import class_weights

__all__ = ["boundary_loss", "class_weights", "cldice_loss", "combined_segmentation_loss",
           "dice_cldice_loss", "dice_loss", "focal_dice_loss", "generalized_dice_loss",
           "hausdorff_dt_loss", "hausdorff_er_loss", "jaccard_loss", "lovasz_hinge_loss",
           "lovasz_softmax_loss", "mask_loss", "mcc_loss", "ohem_cross_entropy",
           "signed_distance_map", "soft_skeleton", "tversky_loss"]
