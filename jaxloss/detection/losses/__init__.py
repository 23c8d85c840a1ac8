"""Whole detector losses."""
