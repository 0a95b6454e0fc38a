"""HumanEval-style tests across two sandboxes: the answer's code and the tests never share a process.

Run by Debian's /usr/bin/python3 inside bubblewrap (stdlib only, no dsparity imports), as one of:

    python3 callproto.py serve REQ_FD RESP_FD PROGRAM ENTRY_POINT   # the answer's sandbox
    python3 callproto.py judge REQ_FD RESP_FD VERDICT_FD            # the tests' sandbox

`serve` runs the answer's program, then answers calls: each request holds the arguments, each
response the return value (or the exception's builtin type name). `judge` runs the task's own
`prompt` (its helper functions) and `test` (which defines `check(candidate)`) from `problem.bin`
and calls `check` with a stand-in whose every call is a round trip to `serve`. The verdict goes to
VERDICT_FD, a pipe only the judge holds: the answer's code has no way to reach it, to read the
tests, or to touch `check`.

Values cross in a small tagged format (`encode`/`decode`, below) and are rebuilt from builtins only
(None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, Fraction,
Decimal): an object with a forged `__eq__`, a subclass of int/str/float/list, or anything
pretending to be a value never reaches the tests; what they compare is plain data, compared by
the builtins' own `==`. The answer's side may send any bytes it likes: `decode` checks every byte,
bounds sizes and depth, and raises ProtocolError on anything else. (Not JSON: `json` and `re` would
double this module's start-up time, paid twice per graded answer.)

Format: one message = ASCII length, ":", payload. Payload values: N T F (None True False),
i<hex int>; f<float.hex>; c<f..><f..> s<n>:<utf-8> b<n>:<bytes> D<n>:<decimal text> q<i..><i..>,
and l t S z d (list tuple set frozenset dict) as <tag><count>; followed by the items (dict: key,
value, key, value ...).
"""

from __future__ import annotations

import builtins
import os
import sys
import types

MAX_MESSAGE = 32 << 20  # bytes in one request or response
MAX_DEPTH = 100
_HEX = frozenset(b"0123456789abcdef")
_CONTAINERS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}
_BUILDERS = {b"l": list, b"t": tuple, b"S": set, b"z": frozenset}


class ProtocolError(ValueError):
    """Bytes that are not a well-formed message."""


# ---------------------------------------------------------------- values


def encode(value, *, lenient: bool = False) -> bytes:
    """`value` in the tagged format. Strict (the judge's arguments): builtins of the exact types
    only. Lenient (the answer's return value): subclasses of builtins and numpy-like values are
    turned into the builtin they stand for, so an honest Counter or IntEnum compares as the dict or
    int it is; anything else is refused (TypeError)."""
    out: list[bytes] = []
    _encode(value, out, lenient, 0)
    return b"".join(out)


def _encode(value, out: list[bytes], lenient: bool, depth: int) -> None:  # noqa: C901  (one branch a type)
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply")
    kind = type(value)
    if value is None:
        out.append(b"N")
    elif kind is bool:
        out.append(b"T" if value else b"F")
    elif kind is int:
        out.append(b"i%x;" % value)
    elif kind is float:
        out.append(b"f" + value.hex().encode() + b";")
    elif kind is complex:
        out.append(b"c")
        _encode(value.real, out, lenient, depth + 1)
        _encode(value.imag, out, lenient, depth + 1)
    elif kind is str:
        _blob(b"s", value.encode("utf-8", "surrogatepass"), out)
    elif kind is bytes:
        _blob(b"b", value, out)
    elif kind in _CONTAINERS:
        out.append(_CONTAINERS[kind] + b"%d;" % len(value))
        for item in value:
            _encode(item, out, lenient, depth + 1)
    elif kind is dict:
        out.append(b"d%d;" % len(value))
        for key, item in value.items():
            _encode(key, out, lenient, depth + 1)
            _encode(item, out, lenient, depth + 1)
    elif (kind.__module__, kind.__qualname__) == ("fractions", "Fraction"):  # not imported: start-up
        out.append(b"q")
        _encode(value.numerator, out, lenient, depth + 1)
        _encode(value.denominator, out, lenient, depth + 1)
    elif (kind.__module__, kind.__qualname__) == ("decimal", "Decimal"):
        _blob(b"D", str(value).encode(), out)
    elif lenient:
        _encode(_as_builtin(value), out, lenient, depth + 1)
    else:
        raise TypeError(f"cannot pass a {kind.__name__} across the sandbox")


def _blob(tag: bytes, data: bytes, out: list[bytes]) -> None:
    out.append(tag + b"%d:" % len(data))
    out.append(data)


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


def decode(data: bytes):
    """Rebuild one value from `encode`'s bytes, from builtins only; ProtocolError on anything
    else, including trailing bytes."""
    try:
        value, end = _decode(data, 0, 0)
    except (IndexError, ValueError, TypeError, ArithmeticError) as exc:  # unhashable set items ...
        raise ProtocolError(f"malformed value: {str(exc)[:200]}") from None
    if end != len(data):
        raise ProtocolError("trailing bytes after the value")
    return value


def _decode(buf: bytes, i: int, depth: int):  # noqa: C901  (one branch a tag)
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    tag = buf[i : i + 1]
    i += 1
    if tag == b"N":
        return None, i
    if tag in (b"T", b"F"):
        return tag == b"T", i
    if tag == b"i":
        text, i = _token(buf, i, b";")
        digits = text[1:] if text[:1] == b"-" else text
        if not digits or not _HEX.issuperset(digits):
            raise ProtocolError("bad integer")
        return int(text, 16), i
    if tag == b"f":
        text, i = _token(buf, i, b";")
        return float.fromhex(text.decode("ascii")), i  # any float it accepts is a real float
    if tag == b"c":
        real, i = _decode_kind(buf, i, depth, float)
        imag, i = _decode_kind(buf, i, depth, float)
        return complex(real, imag), i
    if tag in (b"s", b"b", b"D"):
        data, i = _bytes(buf, i)
        if tag == b"b":
            return data, i
        text = data.decode("utf-8", "surrogatepass") if tag == b"s" else data.decode("ascii")
        if tag == b"s":
            return text, i
        from decimal import Decimal

        return Decimal(text), i
    if tag == b"q":
        from fractions import Fraction

        num, i = _decode_kind(buf, i, depth, int)
        den, i = _decode_kind(buf, i, depth, int)
        return Fraction(num, den), i
    if tag in _BUILDERS or tag == b"d":
        count, i = _count(buf, i, b";")
        items = []
        for _ in range(count * 2 if tag == b"d" else count):
            item, i = _decode(buf, i, depth + 1)
            items.append(item)
        if tag == b"d":
            return dict(zip(items[::2], items[1::2], strict=True)), i
        return _BUILDERS[tag](items), i
    raise ProtocolError(f"unknown tag {tag!r}")


def _decode_kind(buf: bytes, i: int, depth: int, kind: type):
    value, i = _decode(buf, i, depth + 1)
    if type(value) is not kind:
        raise ProtocolError(f"expected {kind.__name__}")
    return value, i


def _token(buf: bytes, i: int, end: bytes) -> tuple[bytes, int]:
    j = buf.find(end, i, i + (1 << 20))
    if j < 0:
        raise ProtocolError("unterminated token")
    return buf[i:j], j + 1


def _count(buf: bytes, i: int, end: bytes) -> tuple[int, int]:
    text, i = _token(buf, i, end)
    if not text.isdigit() or len(text) > 10:  # bytes.isdigit: ASCII digits only
        raise ProtocolError("bad length")
    count = int(text)
    if count > len(buf) - i:  # every item takes a byte at least: no huge allocation from a lie
        raise ProtocolError("length past the end")
    return count, i


def _bytes(buf: bytes, i: int) -> tuple[bytes, int]:
    n, i = _count(buf, i, b":")
    return buf[i : i + n], i + n


# ---------------------------------------------------------------- messages


def frame(payload: bytes) -> bytes:
    return b"%d:" % len(payload) + payload


def read_message(stream) -> bytes | None:
    """One framed message from a buffered binary stream; None at a clean EOF."""
    head = b""
    while (c := stream.read(1)) != b":":
        if not c:
            if head:
                raise ProtocolError("truncated message")
            return None
        head += c
        if len(head) > 9 or not c.isdigit():
            raise ProtocolError("bad message length")
    n = int(head)
    if n > MAX_MESSAGE:
        raise ProtocolError("message too large")
    data = stream.read(n)
    if len(data) != n:
        raise ProtocolError("truncated message")
    return data


# ---------------------------------------------------------------- the answer's side


def serve(req_fd: int, resp_fd: int, program: str, entry_point: str) -> int:
    """Run the answer's program as `__main__`, then answer calls to `entry_point` until EOF."""
    requests, responses = os.fdopen(req_fd, "rb"), os.fdopen(resp_fd, "wb", buffering=0)
    module = types.ModuleType("__main__")
    module.__file__ = program
    sys.modules["__main__"] = module
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec", dont_inherit=True)  # not our __future__ flags
    exec(code, module.__dict__)
    while (request := read_message(requests)) is not None:
        responses.write(frame(_answer(module.__dict__.get(entry_point), request)))
    return 0


def _answer(fn, request: bytes) -> bytes:
    try:
        args, kwargs = decode(request)
        if not callable(fn):
            return b"R" + encode(("NameError", "the function is not defined"))
        return b"O" + encode(fn(*args, **kwargs), lenient=True)
    except BaseException as exc:  # noqa: BLE001  (whatever the answer raised, the judge decides)
        try:
            message = str(exc)[:1000]
        except BaseException:  # noqa: BLE001
            message = ""
        return b"R" + encode((type(exc).__name__, message))


# ---------------------------------------------------------------- the tests' side


class CandidateFailed(BaseException):  # noqa: N818  (BaseException: a test's `except Exception` cannot swallow it)
    """The answer's process broke the protocol, died, or raised something that is not a builtin
    exception."""


class CandidateRaised(CandidateFailed):  # noqa: N818
    """The function raised something that is not a builtin Exception (SystemExit, its own class)."""


class Candidate:
    """Stands in for the answer's function inside the judge: a call is a round trip to `serve`."""

    def __init__(self, req_fd: int, resp_fd: int):
        self._requests = os.fdopen(req_fd, "wb", buffering=0)
        self._responses = os.fdopen(resp_fd, "rb")
        self.calls = 0
        self.failed = ""

    def __call__(self, *args, **kwargs):
        request = frame(encode((list(args), dict(kwargs))))
        try:
            self._requests.write(request)
            reply = read_message(self._responses)
        except OSError as exc:
            self._fail(f"the answer's process is gone ({exc.strerror})")
        except ProtocolError as exc:
            self._fail(f"malformed reply: {exc}")
        if reply is None:
            self._fail("the answer's process ended before answering")
        self.calls += 1
        try:
            value = decode(reply[1:])
        except ProtocolError as exc:
            self._fail(f"malformed reply: {exc}")
        if reply[:1] == b"O":
            return value
        if reply[:1] == b"R" and type(value) is tuple and len(value) == 2:
            raise _builtin_exception(*value)
        self._fail("malformed reply")

    def _fail(self, reason: str):
        """Remembered, not only raised: a test's bare `except:` may swallow the exception, but a
        dead or lying answer process never passes (`judge` checks `failed`)."""
        self.failed = self.failed or reason
        raise CandidateFailed(reason) from None


def _builtin_exception(name, message) -> BaseException:
    """The answer raised `name`: the builtin Exception subclass of that name (a test may expect e.g.
    ValueError); anything else (SystemExit, a class of its own) fails the tests. StopIteration
    becomes RuntimeError, as PEP 479 does in generators: raised out of a call inside `map`,
    `filter` or `zip` it would end the iteration early, and `all(map(...))` would pass."""
    text = message if type(message) is str else ""
    if name in ("StopIteration", "StopAsyncIteration"):
        return RuntimeError(f"the function raised {name}: {text}")
    cls = getattr(builtins, name, None) if type(name) is str and name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:  # noqa: BLE001, S110  (exception classes that need other arguments)
            pass
    return CandidateRaised(f"the function raised {name}: {text}")


def judge(req_fd: int, resp_fd: int, verdict_fd: int, problem_path: str = "problem.bin") -> int:
    verdict = os.fdopen(verdict_fd, "wb", buffering=0)
    os.set_inheritable(verdict_fd, False)
    with open(problem_path, "rb") as f:
        problem = decode(f.read())
    candidate = Candidate(req_fd, resp_fd)
    try:
        ns: dict = {"__name__": "__dsparity_tests__"}
        exec(compile(problem["prompt"], "prompt.py", "exec", dont_inherit=True), ns)
        exec(compile(problem["test"], "test.py", "exec", dont_inherit=True), ns)
        ns[problem["entry_point"]] = candidate
        ns["check"](candidate)
        if candidate.failed:
            raise CandidateFailed(candidate.failed)
        result = ("pass", "") if candidate.calls else ("error", "the tests never called the function")
    except AssertionError as exc:
        result = ("fail", f"AssertionError: {str(exc)[:500]}")
    except CandidateRaised as exc:
        result = ("raised", str(exc)[:500])
    except CandidateFailed as exc:
        result = ("candidate", str(exc)[:500])
    except BaseException as exc:  # noqa: BLE001  (whatever stopped the tests, they did not pass)
        result = ("raised", f"{type(exc).__name__}: {str(exc)[:500]}")
    verdict.write(frame(encode({"verdict": result[0], "detail": result[1], "calls": candidate.calls})))
    return 0


if __name__ == "__main__":
    sys.set_int_max_str_digits(0)
    if sys.argv[1] == "serve":
        sys.exit(serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    sys.exit(judge(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
