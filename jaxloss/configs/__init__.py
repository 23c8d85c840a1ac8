"""Configuration: the declaration table, ``build_loss``, and the mmdetection, MONAI and
quick-reference shims that map their keywords onto jaxloss's losses."""
