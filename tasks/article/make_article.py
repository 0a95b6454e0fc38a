"""Regenerate the article suite's JSONL: `python tasks/article/make_article.py`.

The five prompts the seed article used to compare DeepSeek-V3.2-Exp with V3.1-Terminus, in
Chinese exactly as written and in English (shared/reference/seed-article.md), each with what its
grader needs: checklists for the single-page web artifacts, the novel's length and reminder rules
in the task settings.
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = {
    "idea": {
        "zh": "我是一个博士生，我最近在研究多模态 AIGC 内容的检测，请帮我想一种学术价值、创新价值都很好的 idea，我想发顶会！",  # noqa: E501 (verbatim)
        "en": "I'm a PhD student researching the detection of multimodal AIGC content. Help me come up "
              "with an idea of high academic and innovative value; I want to publish at a top conference!",
    },
    "audio_player": {
        "zh": "帮我开发一个基于 Web Audio API 的网页播放器，我希望你实时分析音乐频谱和节拍，配合驱动一个动态生成的、响应音乐情感的抽象视觉背景",  # noqa: E501 (verbatim)
        "en": "Build a web music player on the Web Audio API that analyses the spectrum and beat in real "
              "time and drives a dynamically generated abstract visual background that responds to the "
              "music's emotion.",
    },
    "hexagon_balls": {
        "zh": "20 个小球在旋转的 6 边形内弹跳，考虑重力，弹力，摩擦力等物理规律。 用 p5js",
        "en": "20 balls bouncing inside a rotating hexagon, with gravity, elasticity, friction and other "
              "physics. Use p5.js.",
    },
    "holo_universe": {
        "zh": "请帮我生成一个全屏的、具有未来感和科技感的网页背景，模拟一个动态的三维全息宇宙。视觉上，它呈现出透明、发光的线条、网格结构和微弱的粒子效果。动态方面，宇宙中的星系或结构应该缓慢旋转、粒子（星辰）缓慢漂浮和闪烁",  # noqa: E501 (verbatim)
        "en": "Generate a full-screen, futuristic, high-tech web background simulating a dynamic 3D "
              "holographic universe: transparent glowing lines, grid structures and faint particle "
              "effects; galaxies or structures rotate slowly, particles (stars) drift and twinkle.",
    },
    "novel": {
        "zh": "请以马斯克、特朗普、扎克伯格、黄仁勋为主要人物，发挥你最大的想象力，生成一篇长篇小说，题材是爱情。最好十万字以上，每到一万字你就在文章中提醒一下。",  # noqa: E501 (verbatim)
        "en": "With Musk, Trump, Zuckerberg and Jensen Huang as the main characters, use your wildest "
              "imagination to write a long romance novel, ideally over 100,000 characters, reminding "
              "me in the text every time you reach another 10,000 characters.",
    },
}

CHECKLISTS = {
    "audio_player": [
        "the page loads as one self-contained HTML file without uncaught errors",
        "the user can load or select an audio file (file input, drag and drop or URL)",
        "play and pause controls work",
        "an AnalyserNode (or equivalent) reads frequency data while the audio plays",
        "a spectrum or waveform visualisation changes with the music",
        "beats are detected and visibly drive the visuals (pulses, flashes, bursts)",
        "an abstract, generated background animates and reacts to the music's energy or mood",
        "the visuals calm down or stop when playback is paused",
    ],
    "hexagon_balls": [
        "the page uses p5.js and draws on a canvas without uncaught errors",
        "exactly 20 balls are visible",
        "a hexagon is drawn and rotates continuously",
        "the balls fall under gravity",
        "the balls bounce off the hexagon's walls (elasticity) and stay inside it",
        "friction or damping slows the balls over time",
        "balls collide with each other instead of overlapping",
        "the animation is smooth",
    ],
    "holo_universe": [
        "the page fills the whole window with an animated canvas or WebGL scene without uncaught errors",
        "transparent, glowing lines are visible",
        "grid or lattice structures are visible",
        "faint particles (stars) are visible",
        "galaxies or structures rotate slowly",
        "particles drift slowly and twinkle",
        "the scene gives a sense of 3D depth (perspective, parallax or camera motion)",
        "the look is futuristic and high-tech, not a flat static picture",
    ],
}


def main() -> None:
    here = Path(__file__).parent
    for name, langs in PROMPTS.items():
        with (here / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for lang in ("zh", "en"):
                row = {"id": f"{name}-{lang}", "lang": lang, "prompt": langs[lang]}
                if name in CHECKLISTS:
                    row["checklist"] = CHECKLISTS[name]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
