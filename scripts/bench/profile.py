"""Summarise a py-spy ``--format raw`` recording: where the gateway's CPU samples went.

    python -m scripts.bench.profile FILE.folded [--top 25]

Prints the share of samples per function by own time (the innermost frame) and inclusive time
(anywhere on the stack), with line numbers dropped so a function counts once.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
#: Frames on every stack (interpreter start-up, the event loop's dispatch): no information.
_PLUMBING = ("<frozen runpy>", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py",
             "natsgw/__main__.py", "natsgw/cli.py")  # fmt: skip


def _frame(text: str) -> str:
    return _LINE.sub(")", text.strip())


def summarise(folded: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            if not name.endswith(_PLUMBING, 0, -1):
                inclusive[name] += samples
    lines = [f"{folded.name}: {total} samples (active CPU only)", "", "own time:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folded", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.folded:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
