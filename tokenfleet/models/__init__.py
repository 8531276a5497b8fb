"""LLM architecture catalog: FLOPs, weight bytes and KV bytes per token."""

from tokenfleet.models.loader import get_model, list_models
from tokenfleet.models.spec import ModelSpec

__all__ = ["ModelSpec", "get_model", "list_models"]
