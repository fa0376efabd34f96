"""Machine learning: networks, the training engine, training methods and driver, weight
transformation, scoring.
"""
