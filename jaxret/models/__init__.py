"""Model building blocks: similarity heads (and encoders)."""

from jaxret.models.heads import HEADS

__all__ = ["HEADS"]
