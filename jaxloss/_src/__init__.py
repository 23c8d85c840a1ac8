"""Shared internals of jaxloss: typing, checks, numerics, reduce, labels, shapes, tracing
and the fused kernels, with public names inside (no underscored name crosses a module)."""
