"""Configuration: schema loading and validation, rule params, model and scan-point resolution.

Never imports torch or training code (``tests/test_layers.py``).  The loading API is re-exported
here: ``from vhbb.config import load_config``.
"""

from vhbb.config.loading import (
    BEST_PREFIX,
    METRICS_SCHEMA_PATH,
    SCHEMA_PATH,
    check_consistency,
    load_config,
    load_schema,
    model_path_name,
    model_reference,
    validate,
)
from vhbb.core.provenance import canonical, section_hash

__all__ = [
    "BEST_PREFIX",
    "METRICS_SCHEMA_PATH",
    "SCHEMA_PATH",
    "canonical",
    "check_consistency",
    "load_config",
    "load_schema",
    "model_path_name",
    "model_reference",
    "section_hash",
    "validate",
]
