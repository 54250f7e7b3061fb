"""Audits a torch.export archive (.pt2) before it is loaded: refuses anything that would
make Python run code the archive chose.

`torch.export.load(...).module()` is not safe on an archive someone else wrote (sha256
in the manifest catches corruption, not an attacker who can write the bundle directory):
  * pickled weights / constants / example inputs are loaded with
    `torch.load(weights_only=False)` as a fallback (bundle/verify.py also forces weights-only);
  * node targets are resolved as attribute paths from `torch`, `operator` and `math`, so
    "torch.os.system" would resolve and run when the graph runs;
  * symbolic shape expressions are parsed with `sympy.sympify`, which evaluates Python;
  * `guards_code` strings are compiled with `exec` into the input-guard function.
The audit admits what exporting a CTR model produces — registered operators from an
allowlisted namespace, arithmetic/comparison `operator`s, `math`, SymPy constructors,
guards over input sizes — and nothing else. A bundle whose programs need more fails at
export time (write_bundle loads what it wrote), never first in production.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

# torch.ops namespaces a model graph may call (ops registered by torch and FBGEMM).
OP_NAMESPACES = frozenset({"aten", "prims", "fbgemm", "higher_order"})
_OPERATORS = frozenset(
    "add sub mul truediv floordiv mod pow neg pos abs invert eq ne lt le gt ge and_ or_ xor not_ getitem lshift rshift".split()
)
_MATH = frozenset(n for n in dir(math) if not n.startswith("_"))
_SYM_FUNCTIONS = frozenset(
    {"torch.sym_int", "torch.sym_float", "torch.sym_max", "torch.sym_min", "torch.sym_not", "torch.sym_ite",
     "torch.sym_sqrt", "torch._sym_sqrt", "torch.sym_sum"}
)
_SYMPY_NAMES = frozenset(
    # SymPy constructors as `srepr` writes them ...
    "Symbol Integer Float Rational Add Mul Pow Equality Unequality LessThan GreaterThan StrictLessThan "
    "StrictGreaterThan Eq Ne Lt Le Gt Ge And Or Not Max Min Abs Piecewise ExprCondPair BooleanTrue "
    "BooleanFalse true false oo zoo nan Infinity NegativeInfinity Half One Zero NegativeOne True False "
    # ... and torch.utils._sympy.functions, which the deserializer passes to sympify
    "CeilDiv CeilToInt CleanDiv FloatPow FloatTrueDiv FloorDiv FloorToInt Identity IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator LShift Mod ModularIndexing PowByNatural PythonMod RShift "
    "RoundDecimal RoundToInt ToFloat TruncToFloat TruncToInt Where".split()
)
_GUARD_NAMES = frozenset({"L", "max", "min", "abs", "int", "float", "math", "inf", "IsNonOverlappingAndDenseIndicator",
                          "cast_symbool_to_symint_guardless"})
_TENSOR_METHODS = frozenset({"size", "stride", "dim", "numel", "storage_offset"})
_KEY = re.compile(r"^[A-Za-z0-9_]*$")  # an input path key: no quotes, so no string break-out
_NUMBER_TEXT = re.compile(r"^[A-Za-z0-9_.+\-]*$")
_ARITH = (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context)


class UnsafeProgram(ValueError):
    """The archive contains something the audit does not admit."""


def audit_pt2(archive: str | Path | bytes) -> None:
    """Raises UnsafeProgram (or zipfile/JSON errors on a damaged archive) unless the
    archive (a path, or its bytes) only holds what a plain exported model needs. A loader
    passes the bytes it will load: auditing a path and then loading it again would let a
    file swapped in between skip the audit."""
    with zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive) as z:
        for info in z.infolist():
            name = info.filename
            if name.endswith(".pt") and info.file_size > 0:
                raise UnsafeProgram(f"pickled payload {name!r}")
            if name.endswith(".json") and ("/models/" in name or name.endswith("_config.json")):
                _walk(json.loads(z.read(name)), name)


def _walk(obj: Any, where: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "use_pickle" and value:
                raise UnsafeProgram(f"{where}: a pickled weight or constant")
            if key == "target" and isinstance(value, str):
                _check_target(value, where)
            elif key == "expr_str" and isinstance(value, str):
                _check_expr(value, where, sympy=True)
            elif key == "guards_code" and isinstance(value, list):
                for guard in value:
                    _check_expr(str(guard), where, sympy=False)
            else:
                _walk(value, where)
    elif isinstance(obj, list):
        for value in obj:
            _walk(value, where)


def _check_target(target: str, where: str) -> None:
    parts = target.split(".")
    ok = (
        (target.startswith("torch.ops.") and len(parts) >= 4 and parts[2] in OP_NAMESPACES)
        or (parts[0] == "_operator" and len(parts) == 2 and parts[1] in _OPERATORS)
        or (parts[0] == "math" and len(parts) == 2 and parts[1] in _MATH)
        or target in _SYM_FUNCTIONS
    )
    if not ok:
        raise UnsafeProgram(f"{where}: graph calls {target!r}, which is not an allowed operator")


def _check_expr(text: str, where: str, *, sympy: bool) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise UnsafeProgram(f"{where}: unparsable expression {text[:80]!r}") from None
    check = _sympy_node if sympy else _guard_node
    for node in ast.walk(tree):
        if not (isinstance(node, (ast.Expression, *_ARITH)) or check(node)):
            raise UnsafeProgram(f"{where}: expression {text[:120]!r} has a disallowed {type(node).__name__}")


def _sympy_node(node: ast.AST) -> bool:
    """srepr-style SymPy: calls of allowlisted constructors on numbers and symbol names."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES
    if isinstance(node, ast.Name):
        return node.id in _SYMPY_NAMES
    if isinstance(node, ast.keyword):
        return node.arg is not None and isinstance(node.value, ast.Constant)
    if isinstance(node, ast.Constant):
        return not isinstance(node.value, str) or bool(_NUMBER_TEXT.match(node.value))
    return isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Tuple))


def _guard_node(node: ast.AST) -> bool:
    """Guards over input sizes: L[...] paths, attribute reads, .size()-style calls, math."""
    if isinstance(node, ast.Call):
        f = node.func
        if node.keywords:
            return False
        if isinstance(f, ast.Name):
            return f.id in _GUARD_NAMES - {"L", "math", "inf"}
        if isinstance(f, ast.Attribute):
            return f.attr in _TENSOR_METHODS or (isinstance(f.value, ast.Name) and f.value.id == "math" and f.attr in _MATH)
        return False
    if isinstance(node, ast.Name):
        return node.id in _GUARD_NAMES
    if isinstance(node, ast.Attribute):
        return not node.attr.startswith("__")
    if isinstance(node, ast.Subscript):
        s = node.slice
        return isinstance(s, ast.Constant) and (isinstance(s.value, int) or (isinstance(s.value, str) and bool(_KEY.match(s.value))))
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, bool)) or node.value is None or (isinstance(node.value, str) and bool(_KEY.match(node.value)))
    return isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Tuple))
