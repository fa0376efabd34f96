"""The safe selection evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from vhbb.core.errors import ConfigError
from vhbb.data import expressions

COLS = {
    "m_jj": np.array([40.0, 60.0, 125.0, 300.0]),
    "btag_max": np.array([0.95, 0.5, 0.99, 0.92]),
    "n_add_jets": np.array([0.0, 1.0, 2.0, 0.0]),
}


def test_chained_comparison_and_boolean_ops():
    out = expressions.evaluate("50 < m_jj < 250 and btag_max > 0.9", COLS)
    np.testing.assert_array_equal(out, [False, False, True, False])
    out = expressions.evaluate("~(n_add_jets >= 2) & (btag_max > 0.9)", COLS)
    np.testing.assert_array_equal(out, [True, False, False, True])
    out = expressions.evaluate("(m_jj < 50) | (m_jj > 250) or n_add_jets == 1", COLS)
    np.testing.assert_array_equal(out, [True, True, False, True])


def test_functions_and_arithmetic():
    out = expressions.evaluate("abs(m_jj - 125) < 10 * sqrt(4)", COLS)
    np.testing.assert_array_equal(out, [False, False, True, False])


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "m_jj.__class__",
        "(lambda: 1)()",
        "[x for x in m_jj]",
        "open('f')",
        "m_jj > 'a'",
    ],
)
def test_forbidden_constructs(expr):
    with pytest.raises(ConfigError):
        expressions.evaluate(expr, COLS)


def test_unknown_column_suggests_close_match():
    with pytest.raises(ConfigError, match=r"'m_j'.*did you mean m_jj"):
        expressions.evaluate("m_j > 50", COLS)


def test_syntax_error_is_config_error():
    with pytest.raises(ConfigError, match="cannot parse"):
        expressions.evaluate("m_jj >", COLS)
