"""LLM track tests (CPU, tiny offline model)."""
