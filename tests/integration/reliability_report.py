"""benchmarks/RELIABILITY.md: the rows the fault and hardening tests add, written at session end
(tests/integration/conftest.py) when any test added one."""

from __future__ import annotations

from datetime import UTC, datetime

from amcsearch.launcher import ROOT

ROWS: list[dict] = []
"""fault, sent, failed, degraded, lost, codes, recovery (and optionally resurrected, peak_rss)."""


def write_report() -> None:
    if not ROWS:
        return
    lines = [
        "# Reliability under faults and hostile input",
        "",
        f"Written by `make test` (tests/integration/test_reliability.py, test_hardening.py), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, 2-core machine, no GPU; clients call on loopback while the "
        "fault happens.",
        "",
        "| fault or input | requests sent | failed | degraded (OK, ANN order) | lost writes | resurrected items "
        "| failure codes | recovery | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in ROWS:
        lines.append(
            f"| {row['fault']} | {row['sent']} | {row['failed']} | {row['degraded']} | {row['lost']} | "
            f"{row.get('resurrected', 0)} | {row['codes'] or '-'} | {row['recovery']} | "
            f"{row.get('peak_rss', '-')} |"
        )
    (ROOT / "benchmarks" / "RELIABILITY.md").write_text("\n".join(lines) + "\n")
