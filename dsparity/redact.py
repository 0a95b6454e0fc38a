"""The one place that keeps secrets out of everything dsparity writes or shows.

Two kinds of secret are masked:
- passwords inside URLs, recognised by their shape wherever they appear (`scheme://user:PW@host`,
  `?password=PW`): database URLs above all, including ones read back from an older store;
- values dsparity read as secrets, registered with `secret()` / `secret_url()` when read (the API
  key of the variable a model spec names, a database URL's password, a webhook URL, the
  dashboard token), then masked wherever they turn up: an error a server echoed, a log line,
  a traceback.

Every sink calls `redact` (or `redact_obj` for JSON-like data): `DsparityError.line()`, every
log record (a record factory, installed on import, so library log lines such as httpx's request
URLs are covered too), provenance, job causes and webhook payloads, dashboard pages. Stored
answers and reasoning go through `mask_registered` (an endpoint may echo its key into an answer).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"
# A shorter value would mask ordinary words all over the output; such a "secret" is no secret.
MIN_SECRET_CHARS = 8

# user:PASSWORD@ after a scheme. RFC 3986 wants '/', '?', '#' and '@' percent-encoded in a
# password; a raw one defeats the shape, not the registered value (see secret_url).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#@]*@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|sslpassword|api[_-]?key|access[_-]?token|token|secret)=)"
    r"[^&;#\s'\"]*", re.IGNORECASE)

_SQLALCHEMY_USERINFO = re.compile(r"[\w+]+://[^:/]*:(?P<password>[^@]*)@")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a value is masked before any part of it


def secret(value: str | None) -> str | None:
    """Register a value read as a secret (returned unchanged) so `redact` masks it from now on."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _add({value, quote(value, safe=""), unquote(value)})
    return value


def secret_url(url: str | None) -> str | None:
    """Register the password of a URL (userinfo or a password-like query parameter)."""
    if not url:
        return url
    found = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found.add(parts.password)
        found.update(v for k, v in parse_qsl(parts.query) if _QUERY_SECRET.match(f"?{k}="))
    except ValueError:  # a malformed URL: its shape is masked by redact() anyway
        pass
    # SQLAlchemy's own reading (a password runs to the first '@'), which takes raw '/' and ':'
    if m := _SQLALCHEMY_USERINFO.match(url):
        found.add(m["password"])
    for value in found:
        secret(value)
    return url


def _add(values: set[str]) -> None:
    global _secrets
    with _lock:
        fresh = {v for v in values if len(v) >= MIN_SECRET_CHARS} | set(_secrets)
        _secrets = tuple(sorted(fresh, key=len, reverse=True))


def mask_registered(text: str | None) -> str | None:
    """`text` with every registered secret replaced by ***, and nothing else touched: for model
    output, where a URL with a password may be the right answer but a key an endpoint echoed
    back into an answer never is."""
    if not text:
        return text
    for value in _secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact(text: str) -> str:
    """`text` with every registered secret and every URL password replaced by ***."""
    if not text:
        return text
    text = mask_registered(text)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)


def redact_obj(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_obj(k): redact_obj(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_obj(v) for v in value]
    return value


def _redact_record(record: logging.LogRecord) -> None:
    # Arguments one by one first: formatters that read record.args (uvicorn's access log
    # unpacks it) keep working; a secret that only shows once formatted collapses the record.
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
    try:
        message = record.getMessage()
    except Exception:  # a malformed call is logging's to report, not ours
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters use a cached exc_text when there is one: cache the masked traceback.
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))


def _install_log_redaction() -> None:
    previous = logging.getLogRecordFactory()
    if getattr(previous, "dsparity_redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    factory.dsparity_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_log_redaction()
