"""LLM architecture catalog: FLOPs, weight bytes and KV bytes per token."""
