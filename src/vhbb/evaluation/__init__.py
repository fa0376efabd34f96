"""Evaluation: model figures, scan summaries and model selection."""
