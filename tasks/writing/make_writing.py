"""Regenerate constraints.jsonl and quality.jsonl: `python tasks/writing/make_writing.py`.

Constraint shapes (the `writing` grader's contract; IFEval-style, every one verifiable):
  {"type": "min_chars" | "max_chars" | "min_words" | "max_words", "value": N}
  {"type": "sections", "headings": ["Section 1", ...]}    each heading on a line of its own
  {"type": "keyword_count", "keyword": "w", "min": N}     "w" appears at least N times
  {"type": "language", "value": "en" | "zh"}
  {"type": "no_commas"}
  {"type": "ends_with", "value": "..."}
Characters are Unicode code points; words are \\w+ runs, each CJK character one word (see
dsparity/evals/graders/writing.py).
"""

from __future__ import annotations

import json
from pathlib import Path

CONSTRAINED = [
    ("en", "Write a short blog post about why lighthouses were painted in stripes. Use between 150 "
           "and 250 words, and mention the word \"daymark\" at least twice.",
     [{"type": "min_words", "value": 150}, {"type": "max_words", "value": 250},
      {"type": "keyword_count", "keyword": "daymark", "min": 2}, {"type": "language", "value": "en"}]),
    ("en", "Write a product description for a solar-powered bicycle lamp in exactly 3 sections, headed "
           "\"Section 1\", \"Section 2\" and \"Section 3\". Do not use any commas.",
     [{"type": "sections", "headings": ["Section 1", "Section 2", "Section 3"]}, {"type": "no_commas"},
      {"type": "language", "value": "en"}]),
    ("en", "Explain to a ten-year-old how a refrigerator keeps food cold, in at most 120 words. End "
           "your answer with the exact sentence: Is there anything else I can help with?",
     [{"type": "max_words", "value": 120},
      {"type": "ends_with", "value": "Is there anything else I can help with?"}]),
    ("en", "Write a cover letter for a junior data analyst position. It must be at least 250 words, "
           "use the word \"curious\" at least 3 times, and contain no commas.",
     [{"type": "min_words", "value": 250}, {"type": "keyword_count", "keyword": "curious", "min": 3},
      {"type": "no_commas"}]),
    ("en", "Summarise the rules of chess for a complete beginner in 4 sections headed \"Part 1\" to "
           "\"Part 4\", using at least 300 words in total.",
     [{"type": "sections", "headings": ["Part 1", "Part 2", "Part 3", "Part 4"]},
      {"type": "min_words", "value": 300}]),
    ("en", "Write a haiku sequence (several haiku) about autumn rain. Keep the whole answer under 400 "
           "characters and in English.",
     [{"type": "max_chars", "value": 400}, {"type": "language", "value": "en"}]),
    ("zh", "请写一篇关于城市夜跑的短文，不少于300字，不超过600字，文中至少出现三次“路灯”。",
     [{"type": "min_chars", "value": 300}, {"type": "max_chars", "value": 600},
      {"type": "keyword_count", "keyword": "路灯", "min": 3}, {"type": "language", "value": "zh"}]),
    ("zh", "请用中文写一份团队周报，分为3个部分，分别以“Section 1”、“Section 2”、“Section 3”开头，"
           "最后一句必须是：以上，谢谢。",
     [{"type": "sections", "headings": ["Section 1", "Section 2", "Section 3"]},
      {"type": "language", "value": "zh"}, {"type": "ends_with", "value": "以上，谢谢。"}]),
    ("zh", "请给一位刚入门的摄影爱好者写一封信，介绍光圈、快门和感光度的关系，不少于400字。",
     [{"type": "min_chars", "value": 400}, {"type": "language", "value": "zh"}]),
    ("en", "Answer in Chinese only: describe your ideal weekend in at least 150 Chinese characters.",
     [{"type": "language", "value": "zh"}, {"type": "min_chars", "value": 150}]),
]

QUALITY = [
    ("en", "Write a 300-word short story that begins with a lost umbrella and ends with a reunion."),
    ("en", "Write a persuasive op-ed (about 400 words) arguing that every town should keep a public "
           "library open late."),
    ("en", "Write a letter from a lighthouse keeper to their successor, passing on what the job "
           "really teaches."),
    ("en", "Explain the idea of opportunity cost with an everyday example, for a high-school newsletter."),
    ("zh", "写一篇约500字的散文，题目是《外婆的厨房》。"),
    ("zh", "以“第一次独自旅行”为题，写一篇有细节、有情感的记叙文。"),
]


def main() -> None:
    here = Path(__file__).parent
    with (here / "constraints.jsonl").open("w", encoding="utf-8") as f:
        for i, (lang, prompt, constraints) in enumerate(CONSTRAINED):
            f.write(json.dumps({"id": f"constrained-{i}", "lang": lang, "prompt": prompt,
                                "constraints": constraints}, ensure_ascii=False) + "\n")
    with (here / "quality.jsonl").open("w", encoding="utf-8") as f:
        for i, (lang, prompt) in enumerate(QUALITY):
            f.write(json.dumps({"id": f"quality-{i}", "lang": lang, "prompt": prompt},
                               ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
