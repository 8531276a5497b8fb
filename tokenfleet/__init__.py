"""tokenfleet: LLM serving economics from real traces, a fleet model and a calibrated step time."""

__version__ = "0.1.0"
