"""Distillation: loss functions (`losses`), layer maps (`mapping`), the objective."""

from kdjax.distill import losses, mapping

__all__ = ["losses", "mapping"]
