"""Boxes: geometry (formats, areas, IoU) and the IoU-family losses."""

from jaxloss.boxes.geometry import (
    box_area,
    box_convert,
    box_iou,
    box_to_distance,
    distance_to_box,
    generalized_box_iou,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
)
from jaxloss.boxes.iou import ciou_loss, diou_loss, eiou_loss, giou_loss, iou_loss, siou_loss

__all__ = ["box_area", "box_convert", "box_iou", "box_to_distance", "ciou_loss", "diou_loss",
           "distance_to_box", "eiou_loss", "generalized_box_iou", "giou_loss", "iou_loss",
           "pairwise_box_iou", "pairwise_generalized_box_iou", "siou_loss"]
