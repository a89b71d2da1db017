"""The recommendation request path as a list of named stages (see config.py)."""

from services.gateway.pipeline.config import recommendation_pipeline
from services.gateway.pipeline.context import Pick, RecContext, RecRequest

__all__ = ["Pick", "RecContext", "RecRequest", "recommendation_pipeline"]
