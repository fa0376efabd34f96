"""Fits: templates and binning, the 2D-histogram stage, control-region scale factors,
signal-strength fits, the evaluation's fast fit, diagnostics, exports, and the drivers of the
fits' plot rules (``figures``).
"""
