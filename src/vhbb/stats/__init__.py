"""Statistics layer: estimators, DisCo, histograms, significance, Minuit wrapper, the likelihood
core.
"""
