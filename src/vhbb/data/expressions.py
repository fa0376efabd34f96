"""Safe evaluation of selection expressions from the config (no Python ``eval`` of config text).

An expression is parsed with :mod:`ast` and only a whitelist of nodes is evaluated: column
names, numbers, arithmetic, comparisons (chained ones too), ``and``/``or``/``not`` (element-wise),
``&``/``|``/``~`` and a few numpy functions.  Example:
``"btag_max > 0.9 and 50 < m_jj < 250 and n_add_jets < 2"``.

Two traps of Python's grammar are refused with the fix in the message: ``&``, ``|`` and ``~``
bind tighter than comparisons, so ``btag_max > 0.9 & n_add_jets >= 2`` would read as
``btag_max > (0.9 & n_add_jets) >= 2`` (write ``(btag_max > 0.9) & (n_add_jets >= 2)`` or use
``and``).  Work is bounded: an expression has at most :data:`MAX_LENGTH` characters,
:data:`MAX_NODES` syntax nodes and :data:`MAX_DEPTH` levels, an exponent must be a number of
magnitude at most :data:`MAX_EXPONENT`, and arithmetic on constants is done in floating point
(``10**10**7`` cannot hang the evaluator).
"""

from __future__ import annotations

import ast
import difflib
import functools
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError

MAX_LENGTH = 5000  # characters
MAX_NODES = 1000  # syntax-tree nodes
MAX_DEPTH = 60  # nesting levels of the syntax tree
MAX_EXPONENT = 100  # |n| of ``x ** n``

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
    if not isinstance(expression, str):
        raise ConfigError(f"selection {expression!r} is not a string")
    if len(expression) > MAX_LENGTH:
        raise ConfigError(
            f"selection '{expression[:60]}...' has {len(expression)} characters (at most "
            f"{MAX_LENGTH}): split it or simplify it"
        )
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(
            f"cannot parse selection '{expression}': {exc.msg}"
            + (f" (at character {exc.offset})" if exc.offset else "")
            + "; write e.g. 'met_pt > 170 and 50 < m_jj < 250'"
        ) from None
    except (RecursionError, MemoryError):
        raise ConfigError(
            f"selection '{expression[:60]}...' is nested too deeply: simplify it"
        ) from None
    _check_size(tree, expression)
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
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = _literal(node.right)
            if exponent is None or abs(exponent) > MAX_EXPONENT:
                raise ConfigError(
                    f"selection '{expression}': the exponent of "
                    f"'{_segment(expression, node)}' must be a number of magnitude at most "
                    f"{MAX_EXPONENT} (e.g. m_jj**2, pt_jj**0.5)"
                )
    _check_precedence(tree, expression)
    return tree


def _check_size(tree: ast.AST, expression: str) -> None:
    """Bound the work: at most MAX_NODES nodes and MAX_DEPTH levels (iterative walk)."""
    stack = [(tree, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES or depth > MAX_DEPTH:
            what = f"{MAX_NODES} terms" if count > MAX_NODES else f"{MAX_DEPTH} nesting levels"
            raise ConfigError(
                f"selection '{expression[:80]}{'...' if len(expression) > 80 else ''}' is too "
                f"large (more than {what}): simplify it"
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _literal(node: ast.AST) -> float | None:
    """The value of a (signed) numeric literal, else None."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            return None
        return sign * float(node.value)
    return None


def _offsets(expression: str, node: ast.AST) -> tuple[int, int]:
    """Character offsets of ``node`` in ``expression`` (ast columns are UTF-8 byte offsets)."""
    lines = expression.splitlines(keepends=True) or [""]
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def pos(lineno: int, col: int) -> int:
        line = lines[lineno - 1]
        return starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    return pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined,arg-type]


def _segment(expression: str, node: ast.AST) -> str:
    start, end = _offsets(expression, node)
    return expression[start:end]


def _parenthesised(expression: str, node: ast.AST) -> bool:
    start, end = _offsets(expression, node)
    return expression[:start].rstrip().endswith("(") and expression[end:].lstrip().startswith(")")


def _is_bitop(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr)


def _is_invert(node: ast.AST) -> bool:
    return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert)


def _check_precedence(tree: ast.AST, expression: str) -> None:
    """Refuse ``&``/``|``/``~`` as an unparenthesised operand of a comparison.

    ``a > 1 & b < 2`` is ``a > (1 & b) < 2`` in Python; the message shows how it reads and the
    parenthesised form the author meant.
    """
    offending = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if (_is_bitop(operand) or _is_invert(operand)) and not _parenthesised(
                    expression, operand
                ):
                    offending.append(operand)
    if not offending:
        return
    # how Python reads it: the offending operands in explicit parentheses
    reads = expression
    for node in sorted(offending, key=lambda n: _offsets(expression, n)[0], reverse=True):
        start, end = _offsets(expression, node)
        reads = reads[:start] + "(" + reads[start:end] + ")" + reads[end:]
    suggestion = _suggest(tree, expression)
    raise ConfigError(
        f"selection '{expression}': '&', '|' and '~' bind tighter than comparisons, so it "
        f"reads as '{reads}'; write '{suggestion}' (parenthesise each comparison) or use "
        "'and', 'or', 'not'"
    )


def _suggest(tree: ast.AST, expression: str) -> str:
    """The expression with each comparison parenthesised (the physicist's meaning)."""

    class Regroup(ast.NodeTransformer):
        def visit_Compare(self, node: ast.Compare) -> ast.AST:
            self.generic_visit(node)
            # flatten the chain, splitting unparenthesised &/| operands
            seq: list[Any] = []

            def flatten(operand: ast.AST) -> None:
                if _is_bitop(operand) and not _parenthesised(expression, operand):
                    assert isinstance(operand, ast.BinOp)
                    flatten(operand.left)
                    seq.append("&" if isinstance(operand.op, ast.BitAnd) else "|")
                    flatten(operand.right)
                else:
                    seq.append(operand)

            flatten(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                seq.append(op)
                flatten(comparator)
            # groups between the &/| markers become comparisons of their own
            groups: list[list[Any]] = [[]]
            joins: list[str] = []
            for item in seq:
                if isinstance(item, str):
                    groups.append([])
                    joins.append(item)
                else:
                    groups[-1].append(item)
            texts = []
            for group in groups:
                operands, ops = group[::2], group[1::2]
                invert = False
                if operands and _is_invert(operands[0]) and ops:
                    if not _parenthesised(expression, operands[0]):
                        invert = True
                        operands[0] = operands[0].operand
                part = (
                    ast.Compare(left=operands[0], ops=ops, comparators=operands[1:])
                    if ops
                    else operands[0]
                )
                text = ast.unparse(part)
                texts.append(f"~({text})" if invert else f"({text})")
            text = texts[0]
            for join, part_text in zip(joins, texts[1:], strict=True):
                text = f"{text} {join} {part_text}"
            return ast.parse(text, mode="eval").body

    import copy

    return ast.unparse(Regroup().visit(copy.deepcopy(tree)))


def names(expression: str) -> set[str]:
    """Column names an expression reads."""
    return set(_names(expression))


@functools.lru_cache(maxsize=256)
def _names(expression: str) -> frozenset[str]:
    """:func:`names`, computed once per expression (like :func:`parse`; evaluating a selection
    per chunk and per JES variation then walks no syntax tree)."""
    tree = parse(expression)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return frozenset({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called)


def evaluate(expression: str, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Evaluate ``expression`` over ``columns`` (arrays of equal length)."""
    tree = parse(expression)
    missing = sorted(_names(expression) - set(columns))
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, list(columns), n=3)
            hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"selection '{expression}' uses unknown column(s) {', '.join(hints)}; "
            f"available: {', '.join(sorted(columns))}"
        )
    try:
        return np.asarray(_eval(tree.body, columns))
    except _ConstantError as exc:
        raise ConfigError(f"selection '{expression}': {exc}") from None


class _ConstantError(Exception):
    """Constant arithmetic that has no finite real value (re-raised naming the selection)."""


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
        left, right = _eval(node.left, cols), _eval(node.right, cols)
        if (
            _is_number(left)
            and _is_number(right)
            and not isinstance(node.op, ast.BitAnd | ast.BitOr)
        ):
            return _constant_arithmetic(node.op, left, right)
        return _BINOPS[type(node.op)](left, right)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _constant_arithmetic(op: ast.operator, left: float, right: float) -> float:
    """Arithmetic on two constants, in floating point (bounded time: no huge integers)."""
    try:
        result = _BINOPS[type(op)](float(left), float(right))
    except (OverflowError, ZeroDivisionError) as exc:
        raise _ConstantError(
            f"constant arithmetic ({left!r}) {type(op).__name__} ({right!r}) fails ({exc}); "
            "write the value as a number"
        ) from None
    if isinstance(result, complex):
        raise _ConstantError(
            f"({left!r}) ** ({right!r}) is not a real number; write the value as a number"
        )
    if isinstance(left, np.floating) or isinstance(right, np.floating):
        return np.float64(result)  # keep numpy's type promotion (as before)
    return result
