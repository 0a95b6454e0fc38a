"""A page cannot forge its own measurements: static pages that fake every signal a page script can
reach (frame counters, requestAnimationFrame, performance.now, Date, console, the DOM query
functions, AudioContext and AnalyserNode) score as static, canvas-less and silent, while pages that
really animate a canvas or really play the tone they are fed still pass, also when they sabotage
the built-ins the grader's probes would use if they ran in the page's world."""

from __future__ import annotations

from pathlib import Path

import pytest
from web_helpers import browser_session, needs_browser, needs_libs

from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.graders import browser as browser_module

WEB = Path(__file__).parent / "fixtures" / "graders" / "web"
pytestmark = [pytest.mark.browser, needs_browser]

# every global signal the grader ever read, or a grader could be tempted to read, faked; nothing drawn
FAKE_EVERYTHING = """<!DOCTYPE html><html><body style="margin:0;background:#fff"><h1>Totally animated</h1>
<div id=ghost style="opacity:0;width:50px;height:50px"></div>
<script>
window.__dsparity = {frames: 1e9, fps: 60,
  audio: {calls: 999, peakHz: %(hz)s, peakValue: 255, sampleRate: 44100, contexts: 1}};
Object.defineProperty(window, '__dsparity_frames', {get: () => Date.now()});
const realRaf = window.requestAnimationFrame.bind(window);
let frames = 0;
window.requestAnimationFrame = (cb) => setTimeout(() => { frames++; cb(performance.now()); }, 0);
(function spin() { frames++; realRaf(spin); })();
setInterval(() => window.requestAnimationFrame(() => {}), 1);
const t0 = performance.now();
performance.now = () => t0 + frames * 16.7;
Date.now = () => 1e12 + frames * 16;
// invisible churn: the compositor may produce frames, the picture does not change
setInterval(() => { document.getElementById('ghost').style.background = frames %% 2 ? 'red' : 'blue'; }, 16);
console.log('fps: 60 animated: true peakHz: %(hz)s');
console.debug('000000000000000000000000', {getFloat: () => 0});
// DOM: a canvas that is not there
const fakeCanvas = {width: 800, height: 600, getBoundingClientRect: () => ({width: 800, height: 600})};
document.querySelectorAll = () => [fakeCanvas];
document.getElementsByTagName = () => [fakeCanvas];
Element.prototype.getBoundingClientRect = () => ({width: 800, height: 600, top: 0, left: 0});
window.getComputedStyle = () => ({visibility: 'visible'});
// audio: analysers whose every answer is the tone, and a real analyser that hears nothing
const fill = (a, v, peak) => { a.fill(v); for (let i = 1; i < a.length; i += 1) a[i] = v; a[46] = peak; };
AnalyserNode.prototype.getByteFrequencyData = function (a) { fill(a, 0, 255); };
AnalyserNode.prototype.getFloatFrequencyData = function (a) { fill(a, -200, 0); };
Object.defineProperty(AnalyserNode.prototype, 'frequencyBinCount', {get: () => 1024});
const RealAC = window.AudioContext;
const silent = new RealAC();
const quiet = silent.createAnalyser();
class FakeAnalyser { constructor() { this.fftSize = 2048; this.frequencyBinCount = 1024;
  this.context = {sampleRate: 44100}; }
  getByteFrequencyData(a) { fill(a, 0, 255); } getFloatFrequencyData(a) { fill(a, -200, 0); }
  connect() {} disconnect() {} }
window.AudioContext = window.webkitAudioContext = function () {
  return {state: 'running', sampleRate: 44100, currentTime: 1, destination: {}, resume: async () => {},
          createAnalyser: () => new FakeAnalyser(), createMediaElementSource: () => ({connect() {}}),
          createOscillator: () => ({connect() {}, start() {}, frequency: {value: 0}})};
};
window.__analyser = new window.AudioContext().createAnalyser();
</script>
<input type="file" id="file"><button id="play">Play</button>
</body></html>"""

GENUINE_CANVAS = """<!DOCTYPE html><html><body style="margin:0">
<canvas id=c width=400 height=300></canvas><script>
const g = document.getElementById('c').getContext('2d'); let x = 0;
function frame() {
  g.fillStyle = '#eee'; g.fillRect(0, 0, 400, 300); g.fillStyle = '#c22';
  g.beginPath(); g.arc(x, 150, 20, 0, 7); g.fill(); x = (x + 4) %% 400; requestAnimationFrame(frame);
}
frame();
%(sabotage)s
</script></body></html>"""

# a genuine page that also wrecks every built-in a probe running in its world would call
SABOTAGE = """
Reflect.apply = () => { throw new Error('no'); };
Function.prototype.call = Function.prototype.apply = function () { return -1; };
window.Float32Array = function () { return [0]; };
Object.getOwnPropertyDescriptor = () => undefined;
Object.defineProperty(Array.prototype, '0', {set() {}, get() { return 0; }, configurable: true});
document.querySelectorAll = () => [];
Element.prototype.getBoundingClientRect = () => ({width: 0, height: 0});
window.getComputedStyle = () => ({visibility: 'hidden'});
Object.defineProperty(AnalyserNode.prototype, 'frequencyBinCount', {get: () => 0});
Object.defineProperty(AnalyserNode.prototype, 'fftSize', {get: () => 1, set() {}});
AnalyserNode.prototype.getFloatFrequencyData = function (a) {};
console.debug = () => {};
"""

# plays a loud oscillator at the nominal frequency into a real analyser and ignores the file it is fed
GUESSED_TONE = """<!DOCTYPE html><html><body><input type=file><button>Play</button>
<canvas id=c width=300 height=100></canvas><script>
const ctx = new AudioContext(); const o = ctx.createOscillator(); const an = ctx.createAnalyser();
o.frequency.value = 1000; o.connect(an); an.connect(ctx.destination); o.start();
const g = document.getElementById('c').getContext('2d'); const d = new Uint8Array(an.frequencyBinCount);
(function f() { an.getByteFrequencyData(d); g.fillStyle = '#000'; g.fillRect(0, 0, 300, 100);
  g.fillStyle = '#0f0'; for (let i = 0; i < 300; i++) g.fillRect(i, 100 - d[i] / 3, 1, d[i] / 3);
  requestAnimationFrame(f); })();
</script></body></html>"""

CHECKLIST = [
    "the animation is smooth",
    "the page is animated",
    {"item": "draws on a canvas", "check": "canvas"},
    {"item": "the analyser hears the loaded file", "check": "audio_peak"},
]


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


def _grade(html: str, tmp_path: Path, **settings) -> dict:
    settings = {"artifact_dir": str(tmp_path), "seconds": 1.5, "shots": 3, **settings}
    g = get_grader("web")(GradeInput("```html\n" + html + "\n```", "", {"checklist": CHECKLIST}), settings)
    return {c["item"]: c for c in g.details["checks"]}


def test_a_static_page_that_fakes_every_signal_scores_static_and_silent(browser, tmp_path):
    r = browser.render(FAKE_EVERYTHING % {"hz": 1000}, seconds=1.5, shots=3, audio_tone_hz=1000)
    assert r.loaded and not r.hung and r.audio["fed"] == ["file input", "play clicked"]
    assert not r.animated and r.fps == 0.0
    assert r.canvas is None  # no canvas in the DOM, whatever the page's query functions say
    assert r.audio["readings"] == 3 and r.audio["peaks"] == []  # its one real analyser hears nothing
    assert r.frames["received"] >= 1  # the screencast ran: zero changed frames is a measurement


def test_the_web_grader_fails_every_forged_item(tmp_path, monkeypatch):
    monkeypatch.setattr(browser_module, "fed_tone", lambda nominal: nominal)  # even when guessed right
    checks = _grade(FAKE_EVERYTHING % {"hz": 1000}, tmp_path, audio_tone_hz=1000)
    assert checks["the animation is smooth"]["ok"] is False
    assert checks["the page is animated"]["ok"] is False
    assert checks["draws on a canvas"]["ok"] is False
    assert checks["the analyser hears the loaded file"]["ok"] is False


def test_a_real_canvas_animation_passes_even_when_it_sabotages_the_built_ins(browser):
    for sabotage in ("", SABOTAGE):
        r = browser.render(GENUINE_CANVAS % {"sabotage": sabotage}, seconds=1.5, shots=3)
        assert r.loaded and not r.errors, r.errors
        assert r.animated and r.fps is not None and r.fps > 20, (r.fps, r.frames)
        assert r.canvas == {
            "width": 400,
            "height": 300,
            "shown_w": 400,
            "shown_h": 300,
            "visible": True,
            "count": 1,
        }


def test_a_real_player_is_heard_even_when_it_sabotages_the_built_ins(browser):
    from dsparity.evals.graders.web import evaluate_check

    player = (WEB / "audio_player.html").read_text()
    assert "analyser.fftSize = 2048" in player
    short_window = player.replace("analyser.fftSize = 2048", "analyser.fftSize = 256")  # bar visualisers
    for page in (player, short_window, player.replace("</script>", SABOTAGE + "</script>", 1)):
        r = browser.render(page, seconds=1.5, shots=3, audio_tone_hz=440)
        tone = r.audio["tone_hz"]
        assert r.audio["fed"] == ["file input", "play clicked"] and not r.errors, r.errors
        assert len(r.audio["peaks"]) >= 2 and all(
            abs(p["hz"] - tone) < 0.01 * tone for p in r.audio["peaks"]
        ), r.audio
        assert evaluate_check("audio_peak", {}, r, {})[0] is True


def test_the_web_grader_passes_a_real_player(tmp_path):
    checks = _grade((WEB / "audio_player.html").read_text(), tmp_path, audio_tone_hz=1000)
    item = checks["the analyser hears the loaded file"]
    assert item["ok"] is True and item["evidence"]["matching"] >= 2, item
    assert checks["draws on a canvas"]["ok"] is True


def test_a_tone_the_page_guessed_is_not_the_tone_it_was_fed(browser, monkeypatch):
    """The oscillator is real and loud, but it is not the file: the fed tone was drawn elsewhere."""
    monkeypatch.setattr(browser_module, "fed_tone", lambda nominal: round(nominal * 1.35, 1))
    r = browser.render(GUESSED_TONE, seconds=1.5, shots=3, audio_tone_hz=1000)
    assert r.audio["tone_hz"] == 1350.0
    assert r.audio["peaks"] and all(abs(p["hz"] - 1000) < 30 for p in r.audio["peaks"]), r.audio
    from dsparity.evals.graders.web import evaluate_check

    ok, evidence = evaluate_check("audio_peak", {}, r, {"audio_tone_hz": 1000})
    assert ok is False and evidence["matching"] == 0


def test_a_page_cannot_hide_its_uncaught_errors(browser):
    hides = """<html><body><script>
    window.addEventListener('error', (e) => e.preventDefault(), true);
    window.onerror = () => true;
    window.addEventListener('unhandledrejection', (e) => e.preventDefault());
    console.error = console.warn = () => {};
    setTimeout(() => notAFunction(), 50);
    requestAnimationFrame(() => { throw new TypeError('hidden in a frame'); });
    Promise.reject(new Error('hidden rejection'));
    </script></body></html>"""
    r = browser.render(hides, seconds=0.5, shots=1)
    text = " | ".join(r.errors)
    for message in ("notAFunction is not defined", "hidden in a frame", "hidden rejection"):
        assert message in text, r.errors
    # errors the page really handles are not errors
    handles = """<html><body><script>
    try { nope(); } catch (e) {}
    async function init() { throw new Error('handled'); }
    init().catch(() => {});
    (async () => { try { await Promise.reject(new Error('awaited')); } catch (e) {} })();
    fetch('https://example.invalid/x.json').catch(() => {});
    </script></body></html>"""
    r = browser.render(handles, seconds=0.5, shots=1)
    assert r.errors == [], r.errors


@needs_libs
def test_a_library_only_fetched_is_not_a_library_used(tmp_path):
    page = """<html><body><canvas></canvas><script>
    window.p5 = function () {}; window.p5.VERSION = '1.11.13';
    fetch('https://cdn.jsdelivr.net/npm/p5@1.11.13/lib/p5.min.js').then(r => r.text());
    eval('window.p5.ok = 1;\\n//# sourceURL=https://cdn.jsdelivr.net/npm/p5@1.11.13/lib/p5.min.js');
    </script></body></html>"""
    g = get_grader("web")(
        GradeInput(
            "```html\n" + page + "\n```",
            "",
            {"checklist": [{"item": "p5", "check": "library", "name": "p5"}]},
        ),
        {"artifact_dir": str(tmp_path), "seconds": 0.5, "shots": 1},
    )
    assert g.details["page"]["served_libraries"] == ["https://cdn.jsdelivr.net/npm/p5@1.11.13/lib/p5.min.js"]
    assert [c["ok"] for c in g.details["checks"] if c["item"] == "p5"] == [False]


SLOW_FADE = """<!DOCTYPE html><html><body style="margin:0"><canvas id=c width=300 height=150></canvas><script>
const g = document.getElementById('c').getContext('2d'); let t = 0;
(function f() { t++; g.fillStyle = `hsl(${t %% 360}, 80%%, 50%%)`; g.fillRect(0, 0, 300, 150);
  requestAnimationFrame(f); })();
</script></body></html>"""
# a faint 10-level flicker on a block: new pixels every frame, but nothing anyone would call motion
FAINT_FLICKER = """<!DOCTYPE html><html><body style="margin:0;background:rgb(100,100,100)">
<div id=d style="width:120px;height:120px;background:rgb(100,100,100)"></div><script>
let on = false;
const d = document.getElementById('d');
(function f() { on = !on; d.style.background = on ? 'rgb(110,110,110)' : 'rgb(100,100,100)';
  requestAnimationFrame(f); })();
</script></body></html>"""


def test_frame_rate_needs_visible_motion(browser):
    from dsparity.evals.graders.web import evaluate_check

    fade = browser.render(SLOW_FADE % {}, seconds=1.5, shots=3)  # one degree of hue a frame
    assert fade.animated and fade.fps is not None and fade.fps > 20, (fade.fps, fade.frames)
    assert evaluate_check("fps", {}, fade, {})[0] is True
    faint = browser.render(FAINT_FLICKER, seconds=1.5, shots=3)
    assert not faint.animated
    assert evaluate_check("fps", {}, faint, {})[0] is False
