"""Measurements of a rendered page taken from outside it, through its DevTools session: nothing a page
script can write is read.

* pictures: screenshots and screencast frames (Page.startScreencast), diffed here;
* the DOM: read from an isolated world (Page.createIsolatedWorld), whose globals and prototypes the
  page's scripts cannot reach;
* audio: the page's own AnalyserNodes (Runtime.queryObjects) read with the genuine built-ins, which
  an init script captures before any page script runs and hands over through the DevTools console
  (the first message of each context, tagged with a per-page random nonce), never through a global;
* errors: exceptions as V8 throws them with no handler (Debugger pause on uncaught exceptions),
  before an `error` listener, onerror or a silenced console could hide them;
* libraries: the script URLs V8 compiled (Debugger.scriptParsed), not the ones a page only fetched.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
from typing import Any

_DIFF_THRESHOLD = 25  # per-channel difference that counts a pixel as changed (pixelmatch ~0.1)
# a screencast frame is a new picture when this many pixels (at screencast scale) moved by more than
# _FRAME_NOISE levels: an unchanged picture encodes to the same JPEG, and a slow fade changes a few
# levels a frame (whether the page visibly animates at all is `animated`, from the screenshots)
_FRAME_MIN_PIXELS = 4
_FRAME_NOISE = 2

# the genuine Web Audio built-ins, captured before any page script and handed to the grader through
# the DevTools console (the page never holds this object; the first message per context is ours)
AUDIO_KIT = r"""
(() => {
  const A = window.AnalyserNode, d = Object.getOwnPropertyDescriptor;
  if (!A || !window.AudioNode || !window.BaseAudioContext) return;
  console.debug(%(nonce)s, {apply: Reflect.apply, proto: A.prototype,
    samples: A.prototype.getFloatTimeDomainData, fft: d(A.prototype, 'fftSize').get,
    context: d(AudioNode.prototype, 'context').get, rate: d(BaseAudioContext.prototype, 'sampleRate').get,
    F32: Float32Array});
})();
"""
# runs with `this` = one of the page's analysers and only captured built-ins (numbers become text
# without calling anything): no page code can run. Returns [sample rate, "s0,s1,..."], the signal
# the analyser receives (its last 4096 samples at most), which the grader analyses itself.
_READ_ANALYSER = r"""function (k) {
  const n = k.apply(k.fft, this, []);
  const a = new k.F32(n);
  k.apply(k.samples, this, [a]);
  let text = '';
  for (let i = n > 4096 ? n - 4096 : 0; i < n; i++) text += a[i] + ',';
  return [k.apply(k.rate, k.apply(k.context, this, []), []), text];
}"""
CANVAS_JS = """(() => {
  const cs = [...document.querySelectorAll('canvas')].map(c => {
    const r = c.getBoundingClientRect();
    return {width: c.width, height: c.height, shown_w: Math.round(r.width), shown_h: Math.round(r.height),
            visible: r.width > 0 && r.height > 0 && getComputedStyle(c).visibility !== 'hidden'};
  }).filter(c => c.visible);
  if (!cs.length) return null;
  cs.sort((a, b) => b.shown_w * b.shown_h - a.shown_w * a.shown_h);
  return {...cs[0], count: cs.length};
})()"""


class PageProbe:
    """Measurements of one page through its own DevTools session: nothing a page script writes is read."""

    def __init__(self, cdp, nonce: str):
        self.cdp, self.nonce = cdp, nonce
        self.kits: dict[int, str] = {}  # execution context -> objectId of the captured built-ins
        self.default_worlds: dict[int, str] = {}  # execution context -> frame id
        self.recording = False
        self.frames: list[str] = []
        self.uncaught: list[str] = []  # exceptions as V8 threw them, before the page could hide them
        self.scripts: dict[str, None] = {}  # URLs V8 compiled as scripts or modules (not just fetched)
        cdp.on("Runtime.executionContextCreated", self._created)
        cdp.on(
            "Runtime.executionContextDestroyed",
            lambda e: self.default_worlds.pop(e["executionContextId"], None),
        )
        cdp.on("Runtime.executionContextsCleared", lambda _e: self.default_worlds.clear())
        cdp.on("Runtime.consoleAPICalled", self._console)
        cdp.on("Page.screencastFrame", self._frame)
        cdp.on("Debugger.paused", self._paused)
        cdp.on("Debugger.scriptParsed", self._parsed)
        cdp.send("Runtime.enable")
        cdp.send("Page.enable")
        # a page can swallow its own errors (an `error` listener calling preventDefault, onerror
        # returning true, a no-op console.error): V8 reports an exception no try/catch will catch
        # when it is thrown, before any of that runs. `debugger;` statements are switched off.
        cdp.send("Debugger.enable")
        cdp.send("Debugger.setBreakpointsActive", {"active": False})
        cdp.send("Debugger.setPauseOnExceptions", {"state": "uncaught"})

    def _created(self, event: dict) -> None:
        ctx = event["context"]
        aux = ctx.get("auxData") or {}
        if aux.get("isDefault") and aux.get("frameId"):
            self.default_worlds[ctx["id"]] = aux["frameId"]

    def _console(self, event: dict) -> None:
        args = event.get("args") or []
        ctx = event.get("executionContextId")
        if (
            len(args) == 2
            and args[0].get("value") == self.nonce
            and ctx not in self.kits
            and args[1].get("objectId")
        ):
            self.kits[ctx] = args[1]["objectId"]
        elif ctx not in self.kits:
            self.kits[ctx] = ""  # the context's first message was not ours: never trust a later one

    def _parsed(self, event: dict) -> None:
        url = event.get("url") or ""
        # a `//# sourceURL=` comment names an eval'd string after any URL the page likes: not a load
        if event.get("hasSourceURL") or not url.startswith(("http:", "https:")):
            return
        if len(self.scripts) < 200:
            self.scripts[url] = None

    def _paused(self, event: dict) -> None:
        data = event.get("data") or {}
        reason = event.get("reason")
        if (
            reason in ("exception", "promiseRejection")
            and data.get("uncaught", True)
            and len(self.uncaught) < 50
        ):
            text = data.get("description") or data.get("value") or data.get("className") or "exception"
            self.uncaught.append(str(text).splitlines()[0][:300])
            if len(self.uncaught) == 50:  # enough evidence: stop paying a pause per exception
                with contextlib.suppress(Exception):
                    self.cdp.send("Debugger.setPauseOnExceptions", {"state": "none"})
        with contextlib.suppress(Exception):  # the page must never stay paused
            self.cdp.send("Debugger.resume")

    def _frame(self, event: dict) -> None:
        if self.recording:
            self.frames.append(event["data"])
        with contextlib.suppress(Exception):  # the browser may be gone
            self.cdp.send("Page.screencastFrameAck", {"sessionId": event["sessionId"]})

    def main_frame(self) -> str:
        return self.cdp.send("Page.getFrameTree")["frameTree"]["frame"]["id"]

    def isolated(self, expression: str) -> Any:
        """Evaluate in a fresh isolated world of the main frame: the DOM is shared, the page's
        globals, prototypes and overrides are not."""
        world = self.cdp.send(
            "Page.createIsolatedWorld", {"frameId": self.main_frame(), "worldName": f"dsparity-{self.nonce}"}
        )
        r = self.cdp.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "contextId": world["executionContextId"],
                "returnByValue": True,
                "silent": True,
            },
        )
        return None if r.get("exceptionDetails") else r["result"].get("value")

    def start_screencast(self, width: int, height: int) -> None:
        self.frames.clear()
        self.recording = True
        self.cdp.send(
            "Page.startScreencast",
            {"format": "jpeg", "quality": 80, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1},
        )

    def stop_screencast(self) -> tuple[int, int]:
        """(frames received, frames whose picture changed from the one before)."""
        self.recording = False
        with contextlib.suppress(Exception):
            self.cdp.send("Page.stopScreencast")
        changed, previous = 0, None
        for data in self.frames:
            pixels = pixels_of(base64.b64decode(data))
            if previous is not None and _changed_pixels(previous, pixels, _FRAME_NOISE) >= _FRAME_MIN_PIXELS:
                changed += 1
            previous = pixels
        return len(self.frames), changed

    def analysers(self, limit: int = 16) -> list[dict[str, float]]:
        """What each live AnalyserNode of the main frame's document receives, read with the genuine
        built-ins: [{"hz": dominant frequency, "db": level (dBFS RMS), "window_s": samples read}]."""
        from playwright.sync_api import Error as PlaywrightError

        frame = self.main_frame()
        out: list[dict[str, float]] = []
        for ctx, kit in list(self.kits.items()):
            if not kit or self.default_worlds.get(ctx) != frame:
                continue
            group = f"dsparity-audio-{self.nonce}"
            try:  # a page can make reading its analysers fail (then: not heard), never the grader
                props = self.cdp.send("Runtime.getProperties", {"objectId": kit, "ownProperties": True})[
                    "result"
                ]
                proto = next(p["value"]["objectId"] for p in props if p["name"] == "proto")
                found = self.cdp.send(
                    "Runtime.queryObjects", {"prototypeObjectId": proto, "objectGroup": group}
                )
                items = self.cdp.send(
                    "Runtime.getProperties", {"objectId": found["objects"]["objectId"], "ownProperties": True}
                )["result"]
                for item in [p for p in items if p["name"].isdigit()][:limit]:
                    r = self.cdp.send(
                        "Runtime.callFunctionOn",
                        {
                            "functionDeclaration": _READ_ANALYSER,
                            "objectId": item["value"]["objectId"],
                            "arguments": [{"objectId": kit}],
                            "returnByValue": True,
                            "silent": True,
                        },
                    )
                    value = r["result"].get("value")
                    if not r.get("exceptionDetails") and isinstance(value, list) and len(value) == 2:
                        out.append(tone_of(value[1], float(value[0])))
            except (PlaywrightError, StopIteration, KeyError, TypeError, ValueError):
                continue
            finally:
                with contextlib.suppress(Exception):
                    self.cdp.send("Runtime.releaseObjectGroup", {"objectGroup": group})
        return out


def tone_of(text: str, rate: float) -> dict[str, float]:
    """Dominant frequency and level of a short signal: Hann window, zero-padded FFT, parabolic
    interpolation of the log magnitude around the peak (within 0.2 % for a pure tone over 2.5
    periods or more), and the RMS level in dB full scale."""
    import numpy as np

    x = np.array([float(v) for v in text.split(",") if v], dtype=np.float64)
    if len(x) < 8 or not np.isfinite(x).all() or rate <= 0:
        return {"hz": 0.0, "db": -200.0, "window_s": 0.0}
    x = x - x.mean()
    rms = float(np.sqrt((x * x).mean()))
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 16))
    k = int(spectrum.argmax())
    shift = 0.0
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-30)
        shift = float(0.5 * (a - c) / (a - 2 * b + c)) if a - 2 * b + c else 0.0
    db = 20 * math.log10(rms) if rms > 0 else -200.0
    return {
        "hz": round((k + shift) * rate / (1 << 16), 1),
        "db": round(db, 1),
        "window_s": round(len(x) / rate, 4),
    }


def pixels_of(image: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.int16)


def distinct_colours(pixels) -> int:
    import numpy as np

    flat = pixels[::2, ::2].reshape(-1, 3).astype(np.int32)
    return int(len(np.unique(flat[:, 0] * 65536 + flat[:, 1] * 256 + flat[:, 2])))


def _changed_pixels(a, b, threshold: int = _DIFF_THRESHOLD) -> int:
    import numpy as np

    if a.shape != b.shape:
        return a.shape[0] * a.shape[1]
    return int((np.abs(a - b).max(axis=2) > threshold).sum())


def changed_fraction(a, b) -> float:
    if a.shape != b.shape:
        return 1.0
    return round(_changed_pixels(a, b) / (a.shape[0] * a.shape[1]), 6)
