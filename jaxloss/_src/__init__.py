"""Shared internals of jaxloss, with public names inside (DESIGN section 3)."""
