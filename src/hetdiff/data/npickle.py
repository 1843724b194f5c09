"""Read one numpy array out of a pickle file without unpickling it.

Some data packages ship arrays as ``pickle.dump(ndarray)``. Unpickling runs arbitrary code, so we
never call ``pickle.load``: we walk the opcodes with :func:`pickletools.genops` on a tiny stack
machine that knows only the opcodes numpy's ``ndarray.__reduce__`` emits under pickle protocols 3 and 4 and only three globals
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``), none of which is
ever called. The array is rebuilt from the state tuple of the reconstruct call::

    _reconstruct(ndarray, (0,), b"b")  BUILD  (version, shape, dtype, is_fortran, raw_bytes)
    dtype(code, False, True)           BUILD  (3, byte_order, ...)
"""

from __future__ import annotations

import math
import pickletools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hetdiff.errors import HetdiffError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_PUSH_ARG = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "SHORT_BINBYTES",
    "BINBYTES",
    "BINBYTES8",
    "BININT",
    "BININT1",
    "BININT2",
}
_PUSH_CONST = {"NEWTRUE": True, "NEWFALSE": False, "NONE": None}
_SKIP = {"PROTO", "FRAME"}


@dataclass
class _Global:
    module: str
    name: str


@dataclass
class _Call:
    func: _Global
    args: tuple[Any, ...]
    state: Any = field(default=None)


def read_ndarray_pickle(raw: bytes, what: str) -> np.ndarray:
    """Decode the bytes of a pickled ``numpy.ndarray`` into a fresh native-endian array.

    ``what`` names the file in error messages. Any opcode, global or layout outside the plain
    ndarray pattern raises :class:`HetdiffError` instead of being executed.
    """
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    for opcode, arg, _pos in pickletools.genops(raw):
        op = opcode.name
        if op in _SKIP:
            continue
        if op in _PUSH_ARG:
            stack.append(arg)
        elif op in _PUSH_CONST:
            stack.append(_PUSH_CONST[op])
        elif op == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif op in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif op in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif op in ("STACK_GLOBAL", "GLOBAL"):
            if op == "GLOBAL":
                module, name = arg.split(" ", 1)
            else:
                name, module = stack.pop(), stack.pop()
            if (module, name) not in _ALLOWED_GLOBALS:
                raise HetdiffError(f"{what}: pickle references {module}.{name}; refusing to load")
            stack.append(_Global(module, name))
        elif op == "MARK":
            marks.append(len(stack))
        elif op == "TUPLE":
            start = marks.pop()
            items = tuple(stack[start:])
            del stack[start:]
            stack.append(items)
        elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(op[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif op == "REDUCE":
            args, func = stack.pop(), stack.pop()
            stack.append(_Call(func, args))
        elif op == "BUILD":
            state = stack.pop()
            stack[-1].state = state
        elif op == "STOP":
            break
        else:
            raise HetdiffError(f"{what}: unexpected pickle opcode {op}; not a plain numpy array")
    return _array_from_reconstruct(stack[-1] if stack else None, what)


def _array_from_reconstruct(node: Any, what: str) -> np.ndarray:
    """Turn the symbolic ``_reconstruct`` call into an array, checking every field."""
    try:
        assert isinstance(node, _Call) and node.func.name == "_reconstruct"
        _version, shape, dtype_call, is_fortran, data = node.state
        assert isinstance(dtype_call, _Call) and dtype_call.func.name == "dtype"
        code, byte_order = dtype_call.args[0], dtype_call.state[1]
        assert isinstance(code, str) and isinstance(data, bytes)
        assert all(isinstance(size, int) and size >= 0 for size in shape)
    except (AssertionError, AttributeError, TypeError, ValueError, IndexError) as err:
        raise HetdiffError(f"{what}: pickle is not a plain numpy array ({err!r})") from None
    dtype = np.dtype(code)
    if byte_order in ("<", ">"):
        dtype = dtype.newbyteorder(byte_order)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise HetdiffError(f"{what}: array payload has {len(data)} bytes, expected {expected}")
    order = "F" if is_fortran else "C"
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order=order)
    return np.array(array, dtype=dtype.newbyteorder("="), order="C", copy=True)
