"""Energy-based Unlearning Alignment (Distinguishable Deletion) for LLM unlearning."""

__version__ = "0.1.0"
