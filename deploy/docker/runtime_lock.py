"""Print the lines of requirements.lock that a service image installs.

`python runtime_lock.py requirements.lock [SKIP ...]`: every pinned line except the packages
named (compared as normalised names, PEP 503), so the image keeps the lock's exact versions and
leaves out what only model building and development need.
"""

from __future__ import annotations

import re
import sys


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_lines(lock_text: str, skip: list[str]) -> list[str]:
    skipped = {normalise(s) for s in skip}
    kept = []
    for line in lock_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]
        if normalise(name) not in skipped:
            kept.append(line)
    return kept


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as lock:
        print("\n".join(runtime_lines(lock.read(), sys.argv[2:])))
