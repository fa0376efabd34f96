"""Plots: style and per-stage figures, from computed results only."""
