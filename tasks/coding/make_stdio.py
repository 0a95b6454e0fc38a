"""Regenerate stdio.jsonl: `python tasks/coding/make_stdio.py`.

Each problem has a reference solution; the expected outputs are produced by running it on every
test input, so the data cannot drift from the statement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBLEMS = [
    {
        "id": "sum-of-evens",
        "statement": "The first line holds an integer n. The second line holds n integers separated "
                     "by spaces. Print the sum of the even numbers among them.",
        "solution": "n = int(input())\nxs = list(map(int, input().split()))\n"
                    "print(sum(x for x in xs if x % 2 == 0))\n",
        "inputs": ["5\n1 2 3 4 5\n", "3\n-2 -3 8\n", "1\n7\n", "6\n10 20 30 1 3 5\n"],
    },
    {
        "id": "word-frequency",
        "statement": "Read one line of lowercase words separated by single spaces. Print each distinct "
                     "word with its count as `word count`, one per line, most frequent first; break "
                     "ties alphabetically.",
        "solution": "from collections import Counter\nc = Counter(input().split())\n"
                    "for w, k in sorted(c.items(), key=lambda t: (-t[1], t[0])):\n    print(w, k)\n",
        "inputs": ["the cat and the hat\n", "b a b a c\n", "one\n"],
    },
    {
        "id": "balanced-brackets",
        "statement": "Each of the following lines (until end of input) is a string of the characters "
                     "()[]{}. For each line print YES if its brackets are balanced, otherwise NO.",
        "solution": "import sys\npairs = {')': '(', ']': '[', '}': '{'}\n"
                    "for line in sys.stdin.read().split():\n    st = []\n    ok = True\n"
                    "    for ch in line:\n        if ch in '([{':\n            st.append(ch)\n"
                    "        elif not st or st.pop() != pairs[ch]:\n            ok = False\n"
                    "            break\n    print('YES' if ok and not st else 'NO')\n",
        "inputs": ["()[]{}\n([)]\n((\n", "{[()()]}\n)\n", "[]\n"],
    },
    {
        "id": "grid-paths",
        "statement": "The first line holds two integers r and c (1 <= r, c <= 15). Then r lines of c "
                     "characters follow, '.' for a free cell and '#' for a wall. Moving only right or "
                     "down, count the paths from the top-left to the bottom-right cell that avoid "
                     "walls. Print the count (0 if either corner is a wall).",
        "solution": "r, c = map(int, input().split())\ng = [input().strip() for _ in range(r)]\n"
                    "dp = [[0] * c for _ in range(r)]\nfor i in range(r):\n    for j in range(c):\n"
                    "        if g[i][j] == '#':\n            continue\n        if i == 0 and j == 0:\n"
                    "            dp[i][j] = 1\n            continue\n"
                    "        dp[i][j] = (dp[i - 1][j] if i else 0) + (dp[i][j - 1] if j else 0)\n"
                    "print(dp[r - 1][c - 1])\n",
        "inputs": ["3 3\n...\n.#.\n...\n", "2 2\n.#\n#.\n", "1 1\n.\n", "4 5\n.....\n.#...\n...#.\n.....\n"],
    },
    {
        "id": "run-length",
        "statement": "Read one line of letters. Print its run-length encoding: each maximal run of "
                     "the same letter as the letter followed by the run length (e.g. aaabcc -> a3b1c2).",
        "solution": "from itertools import groupby\ns = input().strip()\n"
                    "print(''.join(f'{k}{len(list(g))}' for k, g in groupby(s)))\n",
        "inputs": ["aaabcc\n", "z\n", "abababab\n", "qqqqqqqqqqqq\n"],
    },
    {
        "id": "primes-in-range",
        "statement": "The input holds two integers a and b (1 <= a <= b <= 100000) on one line. Print "
                     "how many prime numbers p satisfy a <= p <= b.",
        "solution": "a, b = map(int, input().split())\nsieve = bytearray([1]) * (b + 1)\n"
                    "sieve[0:2] = b'\\x00\\x00'\n"
                    "for i in range(2, int(b ** 0.5) + 1):\n    if sieve[i]:\n"
                    "        sieve[i * i::i] = bytearray(len(sieve[i * i::i]))\n"
                    "print(sum(sieve[a:b + 1]))\n",
        "inputs": ["1 10\n", "10 20\n", "1 100000\n", "99990 100000\n"],
    },
    {
        "id": "interval-merge",
        "statement": "The first line holds n. Each of the next n lines holds two integers l r (l <= r) "
                     "describing a closed interval. Merge overlapping or touching intervals (like [1,3] "
                     "and [3,5]) and print the merged intervals as `l r`, one per line, in increasing order.",
        "solution": "n = int(input())\nivs = sorted(tuple(map(int, input().split())) for _ in range(n))\n"
                    "out = []\nfor l, r in ivs:\n    if out and l <= out[-1][1]:\n"
                    "        out[-1][1] = max(out[-1][1], r)\n    else:\n        out.append([l, r])\n"
                    "for l, r in out:\n    print(l, r)\n",
        "inputs": ["3\n1 3\n2 6\n8 10\n", "2\n1 3\n3 5\n", "1\n4 4\n", "4\n5 7\n1 2\n6 9\n10 11\n"],
    },
    {
        "id": "digital-root-sum",
        "statement": "Each line of the input (until end of input) holds one non-negative integer with up "
                     "to 200 digits. For each, print its digital root (repeatedly sum the digits until "
                     "one digit remains).",
        "solution": "import sys\nfor tok in sys.stdin.read().split():\n    n = int(tok)\n"
                    "    print(0 if n == 0 else 1 + (n - 1) % 9)\n",
        "inputs": ["16\n942\n0\n", "132189\n493193\n", "9" * 150 + "\n"],
    },
]


def run(solution: str, stdin: str) -> str:
    done = subprocess.run([sys.executable, "-c", solution], input=stdin, capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout


def main() -> None:
    out = Path(__file__).with_name("stdio.jsonl")
    with out.open("w", encoding="utf-8") as f:
        for p in PROBLEMS:
            tests = [{"stdin": i, "stdout": run(p["solution"], i)} for i in p["inputs"]]
            row = {"id": p["id"], "statement": p["statement"], "tests": tests,
                   "reference_solution": p["solution"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(PROBLEMS)} problems -> {out}")


if __name__ == "__main__":
    main()
