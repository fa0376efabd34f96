"""Exceptions with messages meant for a physicist reading a Snakemake log."""


class VhbbError(Exception):
    """Base class: every error raised on bad input names the file, key or sample involved."""


class ConfigError(VhbbError):
    """The configuration is invalid (unknown key, wrong type, inconsistent values)."""


class InputError(VhbbError):
    """An input file is missing, unreadable, or lacks what the configuration asks for."""


class DataError(VhbbError):
    """Input values are unusable (NaN/inf under the ``error`` policy, weights summing to <= 0)."""
