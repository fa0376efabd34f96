"""Report layer: the one-page summary of a run (reads every stage's results)."""
