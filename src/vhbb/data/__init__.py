"""Data layer: toy generation, caching, HDF5 export, event keys, safe expressions."""
