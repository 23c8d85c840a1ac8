"""Flax NNX wrappers, one class per declaration of :mod:`jaxloss.registry`.

``jaxloss.nnx.FocalLoss(gamma=2.0, loss_weight=1.0)(logits, labels)`` calls
:func:`jaxloss.sigmoid_focal_loss` and multiplies by ``loss_weight``. The
classes hold no trainable parameters; hyper-parameters are kept in
``self.hparams`` (array ones, such as ``class_weight``, as NNX data).
"""

from __future__ import annotations

from flax import nnx

from jaxloss import registry


def _make_class(decl: registry.Declaration) -> type:

  def __init__(self, *, loss_weight: float = 1.0, reduction: str | None = None,
               **hparams):
    registry.check_config(decl, hparams)
    # nnx.data: array hyper-parameters (class_weight, pos_weight) are pytree data.
    self.hparams = nnx.data({**decl.hyperparameters, **hparams})
    self.reduction = decl.default_reduction if reduction is None else reduction
    self.loss_weight = loss_weight

  def __call__(self, *inputs, weight=None, avg_factor=None, reduction_override=None,
               where=None):
    return registry.call_declared(decl, self.hparams, self.reduction, self.loss_weight,
                                  inputs, weight, avg_factor, reduction_override, where)

  __init__.__signature__ = registry.wrapper_signature(decl)
  return type(decl.name, (nnx.Module,), {
      "__init__": __init__, "__call__": __call__, "__module__": __name__,
      "__doc__": registry.wrapper_doc(decl, "Flax NNX"), "declaration": decl})


for _decl in registry.flax_declarations():
  globals()[_decl.name] = _make_class(_decl)

__all__ = [d.name for d in registry.flax_declarations()]
