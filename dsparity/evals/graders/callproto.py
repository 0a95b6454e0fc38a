"""HumanEval-style tests across two sandboxes: the answer's code and the tests never share a process.

Run by Debian's /usr/bin/python3 inside bubblewrap (stdlib only, no dsparity imports), as one of:

    python3 callproto.py serve REQ_FD RESP_FD PROGRAM ENTRY_POINT   # the answer's sandbox
    python3 callproto.py judge REQ_FD RESP_FD VERDICT_FD            # the tests' sandbox

`serve` runs the answer's program, then answers calls: each request line holds the arguments, each
response line the return value (or the exception's builtin type name). `judge` runs the task's own
`prompt` (its helper functions) and `test` (which defines `check(candidate)`) and calls `check` with
a stand-in whose every call is a round trip to `serve`. The verdict goes to VERDICT_FD, a pipe only
the judge holds: the answer's code has no way to reach it, to read the tests, or to touch `check`.

Values cross as tagged JSON and are rebuilt by `decode` from builtins only (None, bool, int, float,
complex, str, bytes, list, tuple, dict, set, frozenset, Fraction, Decimal): an object with a forged
`__eq__`, a subclass of int/str/float/list, or a NaN pretending to be anything never reaches the test;
what the test compares is plain data, compared by the builtins' own `==`. The answer's side may send
any bytes it likes: `decode` accepts only well-formed values, with bounded size and depth.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import sys
import types

MAX_LINE = 32 << 20  # bytes in one request or response line
MAX_DEPTH = 100
_HEX_INT = re.compile(r"-?0x[0-9a-f]+")
_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})*")
_BIG = 1 << 53


class ProtocolError(ValueError):
    """A line that is not a well-formed value."""


# ---------------------------------------------------------------- values


def encode(value, *, lenient: bool = False, depth: int = 0):
    """A JSON-able, tagged form of `value`. Strict (the judge's arguments): builtins of the exact
    types only. Lenient (the answer's return value): subclasses of builtins and numpy-like values
    are turned into the builtin they stand for, so an honest Counter or IntEnum compares as the
    dict or int it is; anything else is refused (TypeError)."""
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value if -_BIG < value < _BIG else {"i": hex(value)}
    if kind is float:
        return value if math.isfinite(value) else {"x": repr(value)}
    deeper = {"lenient": lenient, "depth": depth + 1}
    if kind is list:
        return [encode(v, **deeper) for v in value]
    if kind is tuple:
        return {"t": [encode(v, **deeper) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, **deeper), encode(v, **deeper)] for k, v in value.items()]}
    if kind in (set, frozenset):
        return {"s" if kind is set else "f": [encode(v, **deeper) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [encode(value.real), encode(value.imag)]}
    if (kind.__module__, kind.__qualname__) == ("fractions", "Fraction"):  # not imported: start-up time
        return {"q": [encode(value.numerator), encode(value.denominator)]}
    if (kind.__module__, kind.__qualname__) == ("decimal", "Decimal"):
        return {"D": str(value)}
    if lenient:
        return encode(_as_builtin(value), lenient=True, depth=depth + 1)
    raise TypeError(f"cannot pass a {kind.__name__} across the sandbox")


def _as_builtin(value):
    """The builtin an honest non-builtin value stands for (answer's side only: untrusted anyway)."""
    for base in (bool, int, float, complex, str, bytes, tuple, list, dict, frozenset, set):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    tolist = getattr(type(value), "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist(value)
    raise TypeError(f"cannot return a {type(value).__name__} across the sandbox")


def decode(obj, depth: int = 0):
    """Rebuild a value from `encode`'s form, from builtins only; ProtocolError on anything else."""
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    kind = type(obj)
    if obj is None or kind in (bool, str, int, float):
        return obj
    if kind is list:
        return [decode(v, depth + 1) for v in obj]
    if kind is not dict or len(obj) != 1:
        raise ProtocolError(f"unexpected {kind.__name__}")
    ((tag, body),) = obj.items()
    try:
        return _TAGS[tag](body, depth + 1)
    except KeyError:
        raise ProtocolError(f"unknown tag {tag!r}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:  # unhashable set items, bad numbers ...
        raise ProtocolError(f"bad {tag!r} value: {exc}") from None


def _items(body, depth):
    if type(body) is not list:
        raise ProtocolError("expected a list")
    return [decode(v, depth) for v in body]


def _pairs(body, depth):
    if type(body) is not list or any(type(p) is not list or len(p) != 2 for p in body):
        raise ProtocolError("expected a list of pairs")
    return {decode(k, depth): decode(v, depth) for k, v in body}


def _text(body, pattern=None):
    if type(body) is not str or len(body) > MAX_LINE or (pattern and not pattern.fullmatch(body)):
        raise ProtocolError("bad text")
    return body


def _number(body, depth):
    value = decode(body, depth)
    if type(value) not in (int, float):
        raise ProtocolError("expected a number")
    return value


def _special_float(body, depth):
    if body not in ("nan", "inf", "-inf"):
        raise ProtocolError("bad float")
    return float(body)


def _complex(body, depth):
    if type(body) is not list or len(body) != 2:
        raise ProtocolError("expected [re, im]")
    return complex(float(_number(body[0], depth)), float(_number(body[1], depth)))


def _fraction(body, depth):
    from fractions import Fraction

    if type(body) is not list or len(body) != 2:
        raise ProtocolError("expected [numerator, denominator]")
    num, den = (decode(v, depth) for v in body)
    if type(num) is not int or type(den) is not int:
        raise ProtocolError("expected integers")
    return Fraction(num, den)


def _decimal(body, depth):
    from decimal import Decimal

    return Decimal(_text(body))


_TAGS = {
    "i": lambda b, d: int(_text(b, _HEX_INT), 16),
    "x": _special_float,
    "t": lambda b, d: tuple(_items(b, d)),
    "s": lambda b, d: set(_items(b, d)),
    "f": lambda b, d: frozenset(_items(b, d)),
    "d": _pairs,
    "b": lambda b, d: bytes.fromhex(_text(b, _HEX_BYTES)),
    "c": _complex,
    "q": _fraction,
    "D": _decimal,
}


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def loads_line(line: bytes) -> dict:
    """One protocol line -> a JSON object (not yet decoded); ProtocolError when malformed."""
    if not line.endswith(b"\n") or len(line) > MAX_LINE:
        raise ProtocolError("truncated or oversized line")
    try:
        obj = json.loads(line, parse_constant=_reject)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {str(exc)[:200]}") from None
    if type(obj) is not dict:
        raise ProtocolError("expected an object")
    return obj


def _reject(name):
    raise ProtocolError(f"bare {name} is not allowed")


# ---------------------------------------------------------------- the answer's side


def serve(req_fd: int, resp_fd: int, program: str, entry_point: str) -> int:
    """Run the answer's program as `__main__`, then answer calls to `entry_point` until EOF."""
    requests, responses = os.fdopen(req_fd, "rb"), os.fdopen(resp_fd, "wb", buffering=0)
    module = types.ModuleType("__main__")
    module.__file__ = program
    sys.modules["__main__"] = module
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec")
    exec(code, module.__dict__)
    while line := requests.readline(MAX_LINE + 1):
        responses.write(dumps(_answer(module.__dict__.get(entry_point), line)))
    return 0


def _answer(fn, line: bytes) -> dict:
    try:
        call = loads_line(line)
        args, kwargs = decode(call["args"]), decode(call["kwargs"])
        if not callable(fn):
            return {"raise": "NameError", "message": "the function is not defined"}
        return {"ok": encode(fn(*args, **kwargs), lenient=True)}
    except BaseException as exc:  # noqa: BLE001  (whatever the answer raised, the judge decides)
        try:
            message = str(exc)[:1000]
        except BaseException:  # noqa: BLE001
            message = ""
        return {"raise": type(exc).__name__, "message": message}


# ---------------------------------------------------------------- the tests' side


class CandidateFailed(BaseException):  # noqa: N818  (BaseException: a test's `except Exception` cannot swallow it)
    """The answer's process broke the protocol, died, or raised something that is not a builtin
    exception."""


class Candidate:
    """Stands in for the answer's function inside the judge: a call is a round trip to `serve`."""

    def __init__(self, req_fd: int, resp_fd: int):
        self._requests = os.fdopen(req_fd, "wb", buffering=0)
        self._responses = os.fdopen(resp_fd, "rb")
        self.calls = 0

    def __call__(self, *args, **kwargs):
        request = dumps({"args": encode(list(args)), "kwargs": encode(dict(kwargs))})
        try:
            self._requests.write(request)
            line = self._responses.readline(MAX_LINE + 1)
        except OSError as exc:
            raise CandidateFailed(f"the answer's process is gone ({exc.strerror})") from None
        if not line:
            raise CandidateFailed("the answer's process ended before answering")
        self.calls += 1
        try:
            reply = loads_line(line)
            if set(reply) == {"ok"}:
                return decode(reply["ok"])
            if set(reply) == {"raise", "message"} and type(reply["raise"]) is str:
                raise _builtin_exception(reply["raise"], reply["message"])
            raise ProtocolError("unexpected reply")
        except ProtocolError as exc:
            raise CandidateFailed(f"malformed reply: {exc}") from None


def _builtin_exception(name: str, message) -> BaseException:
    """The answer raised `name`: re-raise the builtin Exception subclass of that name (a test may
    expect e.g. ValueError); anything else (SystemExit, a class of its own) fails the test."""
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    text = message if type(message) is str else ""
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:  # noqa: BLE001  (exception classes that need other arguments)
            return CandidateFailed(f"the function raised {name}: {text}")
    return CandidateFailed(f"the function raised {name}: {text}")


def judge(req_fd: int, resp_fd: int, verdict_fd: int, problem_path: str = "problem.json") -> int:
    verdict = os.fdopen(verdict_fd, "wb", buffering=0)
    os.set_inheritable(verdict_fd, False)
    with open(problem_path, encoding="utf-8") as f:
        problem = json.load(f)
    candidate = Candidate(req_fd, resp_fd)
    result = {"verdict": "error", "detail": ""}
    try:
        ns: dict = {"__name__": "__dsparity_tests__"}
        exec(compile(problem["prompt"], "prompt.py", "exec"), ns)
        exec(compile(problem["test"], "test.py", "exec"), ns)
        ns[problem["entry_point"]] = candidate
        ns["check"](candidate)
        if candidate.calls:
            result = {"verdict": "pass", "detail": ""}
        else:
            result = {"verdict": "error", "detail": "the tests never called the function"}
    except AssertionError as exc:
        result = {"verdict": "fail", "detail": f"AssertionError: {str(exc)[:500]}"}
    except CandidateFailed as exc:
        result = {"verdict": "candidate", "detail": str(exc)[:500]}
    except BaseException as exc:  # noqa: BLE001  (whatever stopped the tests, they did not pass)
        result = {"verdict": "raised", "detail": f"{type(exc).__name__}: {str(exc)[:500]}"}
    result["calls"] = candidate.calls
    verdict.write(dumps(result))
    return 0


if __name__ == "__main__":
    sys.set_int_max_str_digits(0)
    if sys.argv[1] == "serve":
        sys.exit(serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    sys.exit(judge(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
