"""Registry forms of losses whose optional arrays are keywords: the registry passes a call's
arrays positionally."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from jaxloss.detection.losses.detr import detr_loss
from jaxloss.detection.losses.mask2former import mask2former_loss

__all__ = ["registry_adaptor", "registry_detr_loss", "registry_mask2former_loss"]


def registry_adaptor(fn: Callable[..., Any], optional_inputs: tuple[str, ...],
                     hidden: tuple[str, ...] = ()) -> Callable[..., Any]:
  """``fn`` with the keyword arguments ``optional_inputs`` taken as optional trailing positional
  inputs (the registry passes arrays positionally) and ``hidden`` ones left at their defaults;
  the rest stay keyword-only hyper-parameters."""
  params = list(inspect.signature(fn).parameters.values())
  inputs = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
  extra = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
           for n in optional_inputs]
  keywords = [p for p in params if p.kind is p.KEYWORD_ONLY
              and p.name not in optional_inputs + hidden]

  def adapted(*args, **kwargs):
    given = dict(zip(optional_inputs, args[len(inputs):], strict=False))
    return fn(*args[:len(inputs)], **given, **kwargs)

  adapted.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
      inputs + extra + keywords)
  adapted.__name__ = fn.__name__
  adapted.__doc__ = fn.__doc__
  return adapted


registry_detr_loss = registry_adaptor(detr_loss, ("aux_cls_logits", "aux_box_preds"),
                                      hidden=("dn_cls_logits", "dn_box_preds", "dn_negatives"))
registry_mask2former_loss = registry_adaptor(
    mask2former_loss, ("key",), hidden=("match_point_coords", "loss_point_coords"))
