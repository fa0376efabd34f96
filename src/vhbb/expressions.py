"""Safe evaluation of selection expressions from the config (no Python ``eval`` of config text).

An expression is parsed with :mod:`ast` and only a whitelist of nodes is evaluated: column
names, numbers, arithmetic, comparisons (chained ones too), ``and``/``or``/``not`` (element-wise),
``&``/``|``/``~`` and a few numpy functions.  Example:
``"btag_max > 0.9 and 50 < m_jj < 250 and n_add_jets < 2"``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import operator
from collections.abc import Mapping

import numpy as np

from .errors import ConfigError

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
}
_CMPOPS = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_FUNCS = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": np.log,
    "exp": np.exp,
    "cos": np.cos,
    "sin": np.sin,
    "minimum": np.minimum,
    "maximum": np.maximum,
}


@functools.lru_cache(maxsize=256)
def parse(expression: str) -> ast.Expression:
    """Parse and whitelist-check ``expression``; raise :class:`ConfigError` naming the problem."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"cannot parse selection '{expression}': {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression,
            ast.BoolOp,
            ast.And,
            ast.Or,
            ast.UnaryOp,
            ast.Not,
            ast.USub,
            ast.UAdd,
            ast.Invert,
            ast.BinOp,
            ast.Compare,
            ast.Name,
            ast.Load,
            ast.Constant,
            ast.Call,
            *_BINOPS,
            *_CMPOPS,
        )
        if not isinstance(node, allowed):
            raise ConfigError(
                f"selection '{expression}' uses a forbidden construct ({type(node).__name__}); "
                "allowed: column names, numbers, arithmetic, comparisons, and/or/not, "
                f"functions {sorted(_FUNCS)}"
            )
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                raise ConfigError(
                    f"selection '{expression}': only the functions {sorted(_FUNCS)} "
                    "with positional arguments are allowed"
                )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool):
            raise ConfigError(f"selection '{expression}': only numeric constants are allowed")
    return tree


def names(expression: str) -> set[str]:
    """Column names an expression reads."""
    tree = parse(expression)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def evaluate(expression: str, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Evaluate ``expression`` over ``columns`` (arrays of equal length)."""
    tree = parse(expression)
    missing = sorted(names(expression) - set(columns))
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, list(columns), n=3)
            hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"selection '{expression}' uses unknown column(s) {', '.join(hints)}; "
            f"available: {', '.join(sorted(columns))}"
        )
    return np.asarray(_eval(tree.body, columns))


def _eval(node: ast.AST, cols: Mapping[str, np.ndarray]):  # type: ignore[no-untyped-def]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return cols[node.id]
    if isinstance(node, ast.BoolOp):
        fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return functools.reduce(fn, (_eval(v, cols) for v in node.values))
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, cols)
        if isinstance(node.op, ast.Not | ast.Invert):
            return np.logical_not(value)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, cols), _eval(node.right, cols))
    if isinstance(node, ast.Compare):
        left = _eval(node.left, cols)
        result = None
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, cols)
            term = _CMPOPS[type(op)](left, right)
            result = term if result is None else np.logical_and(result, term)
            left = right
        return result
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return _FUNCS[node.func.id](*(_eval(a, cols) for a in node.args))
    raise ConfigError(f"unsupported expression node {type(node).__name__}")  # pragma: no cover
