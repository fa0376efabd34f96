"""vhbb: a CMS-style VH(bb), Z->nunu analysis chain with a mass-decorrelated classifier.

One module per workflow stage; each exposes pure functions (arrays in, arrays out) and a thin
``run_*`` entry point that does the file I/O and is called from ``workflow/scripts``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vhbb")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
