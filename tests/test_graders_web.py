"""Web artifacts in the real system Chromium: each kind of page classified within its time limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from web_helpers import browser_session, needs_browser, needs_libs

from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.graders.browser import render
from dsparity.evals.graders.web import decide_item, extract_page, infer_checks
from dsparity.evals.graders.weblibs import resolve_library, web_libs_dir

WEB = Path(__file__).parent / "fixtures" / "graders" / "web"


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


P5_SKETCH = """<!DOCTYPE html><html><head>
<script src="https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/p5.min.js"></script></head><body><script>
let x = 0;
function setup() { createCanvas(400, 300); }
function draw() { background(230); x = (x + 4) % 400; fill(200, 30, 30); circle(x, 150, 40); }
</script></body></html>"""


def test_extract_page_variants():
    html, how = extract_page(
        "Sure!\n```html\n<html><body>old</body></html>\n```\nBetter:\n"
        "```html\n<html><head></head><body>new</body></html>\n```"
    )
    assert "new" in html and "old" not in html and how == "last html block"
    html, how = extract_page(
        '```html\n<html><head><link rel="stylesheet" href="style.css"></head><body>'
        '<script src="app.js"></script></body></html>\n```\n```css\nbody{color:red}\n```\n'
        "```javascript\nconsole.log(1)\n```"
    )
    assert "<style>" in html and "body{color:red}" in html and "console.log(1)" in html
    assert "style.css" not in html and "app.js" not in html
    html, how = extract_page("```js\nfunction setup(){createCanvas(100,100)}\nfunction draw(){}\n```")
    assert "p5.min.js" in html and "p5 added" in how
    final = GradeInput("<think>```html\n<html>x</html>\n```</think>no page", "", {}).text
    assert extract_page(final)[0] == ""


@needs_libs
def test_cdn_urls_resolve_to_vendored_copies():
    root = web_libs_dir()
    cases = {
        "https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/p5.min.js": "p5@1.11.13/lib/p5.min.js",
        "https://cdn.jsdelivr.net/npm/p5@2.0.3/lib/p5.js": "p5@2.3.4/lib/p5.js",
        "https://cdnjs.cloudflare.com/ajax/libs/p5.js/1.4.0/p5.min.js": "p5@1.11.13/lib/p5.min.js",
        "https://cdnjs.cloudflare.com/ajax/libs/p5.js/1.4.0/addons/p5.sound.min.js": (
            "p5@1.11.13/lib/addons/p5.sound.min.js"
        ),
        "https://cdnjs.cloudflare.com/ajax/libs/three.js/r128/three.min.js": (
            "three@0.160.1/build/three.min.js"
        ),
        "https://unpkg.com/three@0.170.0/build/three.module.js": "three@0.187.0/build/three.module.js",
        "https://unpkg.com/three@0.170.0/examples/jsm/controls/OrbitControls.js": (
            "three@0.187.0/examples/jsm/controls/OrbitControls.js"
        ),
        "https://cdn.jsdelivr.net/npm/three@0.160.0/+esm": "three@0.160.1/build/three.module.js",
        "https://unpkg.com/tone@14.7.77/build/Tone.js": "tone@15.5.44/build/Tone.js",
        "https://cdnjs.cloudflare.com/ajax/libs/tone/14.8.49/Tone.js": "tone@15.5.44/build/Tone.js",
    }
    for url, rel in cases.items():
        assert resolve_library(url) == (root / rel).resolve(), url
    assert resolve_library("https://example.invalid/tracker.js") is None
    assert resolve_library("https://fonts.googleapis.com/css2?family=Roboto") is None


@pytest.mark.browser
@needs_browser
@needs_libs
def test_animated_p5_page(tmp_path):
    r = render(P5_SKETCH, seconds=1.5, artifact_dir=tmp_path, name="anim")
    assert r.loaded and not r.errors and not r.hung and not r.blocked_requests
    assert r.canvas["width"] == 400 and r.canvas["height"] == 300
    assert r.animated and r.fps is not None and r.fps > 20
    assert r.served_libraries == ["https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/p5.min.js"]
    assert len(r.screenshots) == 3 and all(Path(s["path"]).is_file() for s in r.screenshots)


@pytest.mark.browser
@needs_browser
def test_static_page(browser):
    r = browser.render(
        "<html><body style='background:#fff'><h1>Hello</h1>"
        "<canvas width=50 height=50></canvas></body></html>",
        seconds=1.0,
        shots=2,
    )
    assert r.loaded and not r.errors and not r.animated and r.canvas["count"] == 1
    assert r.screenshots[0]["path"] is None  # no artifact folder: nothing kept


@pytest.mark.browser
@needs_browser
def test_page_that_throws_and_page_that_fetches_outside(browser):
    r = browser.render(
        "<html><body><script>undefinedFunctionCall();</script>"
        "<img src='https://example.invalid/pixel.png'>"
        "<script>fetch('https://example.invalid/data.json').catch(() => {});</script></body></html>",
        seconds=1.0,
        shots=2,
    )
    assert r.loaded and any("undefinedFunctionCall" in e for e in r.errors)
    assert "https://example.invalid/pixel.png" in r.blocked_requests
    assert "https://example.invalid/data.json" in r.blocked_requests


@pytest.mark.browser
@needs_browser
def test_alert_is_dismissed(browser):
    r = browser.render(
        "<html><body><script>alert('hi'); confirm('sure?'); document.body.style.background='red';"
        "</script></body></html>",
        seconds=1.0,
        shots=2,
    )
    assert r.loaded and not r.hung
    assert r.dialogs == ["alert: hi", "confirm: sure?"]


@pytest.mark.browser
@needs_browser
def test_infinite_loop_is_classified_as_hung_within_its_limit(browser):
    r = browser.render(
        "<html><body><script>while (true) {}</script></body></html>", seconds=1.0, load_timeout_s=2.0
    )
    assert r.hung and not r.loaded and r.wall_s < 15
    r = browser.render(
        "<html><body><script>setTimeout(() => { while (true) {} }, 300);</script></body></html>",
        seconds=1.5,
        shots=3,
    )
    assert r.loaded and r.hung and r.wall_s < 15


@pytest.mark.browser
@needs_browser
def test_math_random_is_seeded(browser, tmp_path):
    page = (
        "<html><body style='margin:0'><canvas id=c width=200 height=200></canvas><script>"
        "const g = document.getElementById('c').getContext('2d');"
        "for (let i = 0; i < 50; i++) { g.fillStyle = `hsl(${Math.random() * 360},80%,50%)`;"
        "g.fillRect(Math.random() * 180, Math.random() * 180, 20, 20); }</script></body></html>"
    )
    shots = [
        browser.render(
            page, seconds=0.4, shots=1, seed=s, artifact_dir=tmp_path, name=f"s{s}-{i}"
        ).screenshots[0]
        for i, s in enumerate((7, 7, 8))
    ]
    data = [Path(s["path"]).read_bytes() for s in shots]
    assert data[0] == data[1] and data[0] != data[2]


@pytest.mark.browser
@needs_browser
def test_audio_player_gets_a_test_tone(browser):
    r = browser.render((WEB / "audio_player.html").read_text(), seconds=1.5, shots=2, audio_tone_hz=1000)
    assert r.audio["fed"] == ["file input", "play clicked"] and not r.errors
    tone = r.audio["tone_hz"]  # drawn in the octave above the nominal 1000 Hz
    assert 1000 <= tone <= 2000 and r.audio["readings"] == 2
    assert [p["hz"] for p in r.audio["peaks"]] == [pytest.approx(tone, abs=25)] * 2


@pytest.mark.browser
@needs_browser
@needs_libs
def test_web_grader_with_checklist(tmp_path):
    answer = "Here you go:\n```html\n" + (WEB / "hexagon_balls.html").read_text() + "\n```"
    doc = {
        "checklist": [
            "exactly 20 balls are visible",
            "the page uses p5.js and draws on a canvas without uncaught errors",
            "the balls stay inside the hexagon",
            "gravity pulls the balls down",
            {"item": "smooth", "check": "fps", "min": 20},
        ]
    }
    g = get_grader("web")(
        GradeInput(answer, "", doc),
        {
            "artifact_dir": str(tmp_path),
            "seconds": 1.5,
            "require": ["loads", "no_errors", "canvas", "animated"],
        },
    )
    by_item = {c["item"]: c for c in g.details["checks"]}
    assert by_item["exactly 20 balls are visible"]["ok"] is True
    assert by_item["the page uses p5.js and draws on a canvas without uncaught errors"]["ok"] is True
    assert by_item["gravity pulls the balls down"]["ok"] is True
    assert by_item["the balls stay inside the hexagon"]["ok"] is None
    assert g.details["needs_judge"] == ["the balls stay inside the hexagon"]
    assert g.passed and g.score == 1.0
    assert all(Path(p).is_file() and Path(p).parent == tmp_path for p in g.details["screenshots"])
    broken = get_grader("web")(
        GradeInput("```html\n<html><body><script>nope()</script></body></html>\n```", "", {}),
        {"artifact_dir": str(tmp_path), "seconds": 0.5, "shots": 1},
    )
    assert not broken.passed and broken.score == pytest.approx(1 / 3)
    none = get_grader("web")(GradeInput("I cannot write HTML.", "", {}), {"artifact_dir": str(tmp_path)})
    assert none.score == 0 and "no HTML" in none.details["error"]


@pytest.mark.browser
@needs_browser
@needs_libs
def test_p5_v2_three_and_tone_are_served_offline(browser):
    page = (
        "<html><head><script src='https://cdn.jsdelivr.net/npm/p5@2.0.0/lib/p5.min.js'></script>"
        "<script src='https://cdnjs.cloudflare.com/ajax/libs/three.js/r128/three.min.js'></script>"
        "<script src='https://unpkg.com/tone@14.7.77/build/Tone.js'></script></head><body><script>"
        "console.log('libs', typeof p5, p5.VERSION, typeof THREE.WebGLRenderer, typeof Tone.Synth);"
        "</script></body></html>"
    )
    r = browser.render(page, seconds=0.5, shots=1)
    assert r.loaded and not r.blocked_requests and len(r.served_libraries) == 3
    assert "log: libs function 2.3.4 function function" in r.console, r.console


@pytest.mark.browser
@needs_browser
def test_items_without_a_heuristic_go_to_the_judge(tmp_path):
    import json

    from loopback import ServerThread, scripted_app

    from dsparity.evals.graders.judge import close_judges

    def checklist_judge(prompt: str) -> str:
        assert "Measured evidence" in prompt and "the greeting is friendly" in prompt
        return json.dumps(
            {
                "items": [
                    {"item": "the greeting is friendly", "ok": True, "reason": "says hello"},
                    {"item": "the title is blue", "ok": False, "reason": "it is black"},
                ]
            }
        )

    page = "```html\n<html><body><h1>Hello there</h1></body></html>\n```"
    doc = {
        "question": "Make a friendly page.",
        "checklist": ["the greeting is friendly", "the title is blue"],
    }
    try:
        with ServerThread(scripted_app(checklist_judge, model="judge")) as server:
            g = get_grader("web")(
                GradeInput(page, "", doc),
                {
                    "artifact_dir": str(tmp_path),
                    "seconds": 0.5,
                    "shots": 1,
                    "judge": f"openai:judge@{server.base_url}",
                },
            )
    finally:
        close_judges()
    by_item = {c["item"]: c for c in g.details["checks"]}
    assert (
        by_item["the greeting is friendly"]["ok"] is True
        and by_item["the greeting is friendly"]["by"] == "judge"
    )
    assert by_item["the title is blue"]["ok"] is False
    assert g.details["needs_judge"] == [] and g.score == pytest.approx(4 / 5)
    assert "Hello there" in g.details["judge"]["prompt"][-1]["content"] and g.details["judge"]["raw_outputs"]


def test_checklist_wording_to_checks():
    assert [c for c, _, _ in infer_checks("exactly 20 balls are visible")] == ["ball_count"]
    assert infer_checks("exactly 20 balls are visible")[0][1] == {"expected": 20}
    assert infer_checks("play and pause controls work") == []
    # a failed check decides; a pass decides only when the item asks for nothing more
    assert decide_item("the animation is smooth", [("fps", True, "full"), ("animated", True, "full")]) is True
    assert (
        decide_item("the animation is smooth", [("fps", False, "full"), ("animated", True, "full")]) is False
    )
    item = "an abstract background animates and reacts to the music"
    assert decide_item(item, [("animated", True, "full")]) is None
    assert decide_item(item, [("animated", False, "full")]) is False
    item = "the user can select an audio file"
    assert decide_item(item, [("file_input", True, "sufficient")]) is True
    assert decide_item(item, [("file_input", None, "sufficient")]) is None


@pytest.mark.browser
@needs_browser
def test_the_watchdog_kills_an_overrunning_render_and_the_session_recovers(browser, monkeypatch):
    from dsparity.evals.graders import browser as browser_module

    monkeypatch.setattr(browser_module, "_watchdog_budget", lambda opts: 1.5)
    r = browser.render("<html><body><h1>slow</h1></body></html>", seconds=6.0, shots=3)
    assert r.hung and any("grader watchdog" in e for e in r.errors) and r.wall_s < 15, r
    monkeypatch.undo()
    r = browser.render("<html><body><h1>next</h1></body></html>", seconds=0.3, shots=1)
    assert r.loaded and not r.hung and not r.errors
