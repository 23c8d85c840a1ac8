"""Flax Linen wrappers, one class per declaration of :mod:`jaxloss.registry`.

Each is a parameter-free ``flax.linen.Module`` whose dataclass fields are the
loss's hyper-parameters plus ``reduction`` and ``loss_weight``; use it inside
a Linen model or alone, ``FocalLoss(gamma=2.0).apply({}, logits, labels)``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from jaxloss import registry


def _make_class(decl: registry.Declaration) -> type:
  fields = dict(decl.hyperparameters)
  fields["reduction"] = decl.default_reduction
  fields["loss_weight"] = 1.0

  def __call__(self, *inputs, weight=None, avg_factor=None, reduction_override=None,
               where=None, axis_name=None):
    hparams = {k: getattr(self, k) for k in decl.hyperparameters}
    return registry.call_declared(decl, hparams, self.reduction, self.loss_weight,
                                  inputs, weight, avg_factor, reduction_override, where,
                                  axis_name)

  namespace = {"__annotations__": {k: Any for k in fields}, **fields,
               "__call__": __call__, "__module__": __name__,
               "__doc__": registry.wrapper_doc(decl, "Flax Linen")}
  cls = type(decl.name, (nn.Module,), namespace)
  cls.declaration = decl
  return cls


for _decl in registry.flax_declarations():
  globals()[_decl.name] = _make_class(_decl)

__all__ = [d.name for d in registry.flax_declarations()]
