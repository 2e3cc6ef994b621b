"""`make loadtest`: a headless, bounded locust run on loopback; prints p50/p95/p99 and failures.

Starts the whole stack on free loopback ports (or uses LOADTEST_TARGET=HOST:PORT of a running
SearchService), indexes a seed set from the synthetic corpus (ids prefixed `lt-`), runs locust
with the profiles of loadtests/locustfile.py (optionally the step shape of loadtests/shapes.py),
writes locust's CSV files under --out, prints the table, removes the `lt-` images again, and
exits non-zero when any request failed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from loadtests import data as loaddata
from loadtests.auth import write_metadata
from loadtests.steps import StepPlan

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
SHAPES = ROOT / "loadtests" / "shapes.py"
SEED_BATCH = 16
log = logging.getLogger("loadtest")


@dataclass
class Row:
    name: str
    requests: int
    failures: int
    p50: float
    p95: float
    p99: float
    rps: float


def _number(value: str) -> float:
    return float(value) if value not in ("", "N/A") else float("nan")


def read_stats(prefix: Path) -> list[Row]:
    """Locust's <prefix>_stats.csv, one row per request name plus 'Aggregated' (times in ms)."""
    rows = []
    with open(f"{prefix}_stats.csv", newline="") as handle:
        for record in csv.DictReader(handle):
            p50, p95, p99, rps = (_number(record.get(key, "")) for key in ("50%", "95%", "99%", "Requests/s"))
            rows.append(
                Row(record["Name"], int(record["Request Count"]), int(record["Failure Count"]), p50, p95, p99, rps)
            )
    return rows


def read_failures(prefix: Path) -> list[tuple[str, str, int]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [(r["Name"], r["Error"], int(r["Occurrences"])) for r in csv.DictReader(handle)]


def table(rows: list[Row]) -> str:
    lines = [f"{'request':<22} {'count':>7} {'fail':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7}"]
    for r in rows:
        lines.append(
            f"{r.name or 'Aggregated':<22} {r.requests:>7} {r.failures:>5} {r.p50:>8.0f} {r.p95:>8.0f} "
            f"{r.p99:>8.0f} {r.rps:>7.2f}"
        )
    return "\n".join(lines)


def seeded_metadata(i: int) -> dict[str, str]:
    """What the filtered profile filters on: a shop (10 values) and a price."""
    return {"shop": f"shop-{i % 10}", "price": str(5 * (i % 20))}


def seed_index(target: str, load: loaddata.LoadData) -> None:
    from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for start in range(0, len(load.seeded), SEED_BATCH):
            batch = load.seeded[start : start + SEED_BATCH]
            reply = stub.Index(
                search_pb2.IndexRequest(
                    skip_auto_tags=True,
                    items=[
                        search_pb2.ImageItem(
                            id=s.id,
                            image=s.png,
                            title=s.title,
                            metadata=seeded_metadata(start + i),
                            keywords=[common_pb2.Keyword(text=t, confidence=c) for t, c in s.keywords],
                        )
                        for i, s in enumerate(batch)
                    ],
                ),
                timeout=120,
                metadata=write_metadata(),
            )
            if reply.failed_count:
                raise RuntimeError(f"seeding failed: {[r.error for r in reply.results if not r.indexed][:3]}")


def remove_load_images(target: str, ids: list[str]) -> int:
    from amcsearch.v1 import search_pb2, search_pb2_grpc

    removed = 0
    with grpc.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for start in range(0, len(ids), 50):
            removed += stub.Delete(
                search_pb2.DeleteRequest(ids=ids[start : start + 50]), timeout=60, metadata=write_metadata()
            ).deleted_count
    return removed


def query_cache_counts(metrics_url: str | None) -> tuple[float, float] | None:
    if not metrics_url:
        return None
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()

    def total(name: str) -> float:
        return sum(float(m) for m in re.findall(rf'^{name}{{[^}}]*kind="query"[^}}]*}} (\S+)$', text, re.M))

    return total("amcsearch_cache_hits_total"), total("amcsearch_cache_misses_total")


def run_locust(
    target: str,
    data_file: Path,
    prefix: Path,
    users: int,
    spawn_rate: float,
    run_time: str,
    shape: str,
    hard_limit: float,
) -> int:
    files = f"{LOCUSTFILE},{SHAPES}" if shape == "step" else str(LOCUSTFILE)
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        files,
        "--headless",
        "--host",
        target,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "15",
    ]
    if shape == "none":
        argv += ["-u", str(users), "-r", str(spawn_rate), "-t", run_time]
    env = dict(
        os.environ,
        LOADTEST_DATA=str(data_file),
        PYTHONPATH=os.pathsep.join([str(ROOT / "services"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    log.info("locust: %s", " ".join(argv[2:]))
    try:
        return subprocess.run(argv, env=env, cwd=ROOT, timeout=hard_limit).returncode
    except subprocess.TimeoutExpired:
        print(f"locust did not stop within {hard_limit:.0f}s", file=sys.stderr)
        return 124


def seconds(run_time: str) -> float:
    match = re.fullmatch(r"(\d+)([smh]?)", run_time)
    if not match:
        raise argparse.ArgumentTypeError(f"run time {run_time!r}: use e.g. 30s, 2m")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("LOADTEST_TARGET"),
        help="HOST:PORT of a running SearchService (loopback); default: start a stack",
    )
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument(
        "--shape",
        choices=["none", "step"],
        default="none",
        help="step: loadtests/shapes.py (LOADTEST_STEP_* settings) instead of --users",
    )
    parser.add_argument("--seeded", type=int, default=60, help="images indexed before the run")
    parser.add_argument("--to-index", type=int, default=24, help="images the indexing user cycles through")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "loadtest")
    parser.add_argument(
        "--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    if args.target and not args.target.startswith(("127.", "localhost:", "[::1]:")):
        parser.error(f"--target {args.target}: load goes to loopback addresses only")
    duration = StepPlan.from_env().duration if args.shape == "step" else seconds(args.run_time)

    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "amcsearch"
    for old in args.out.glob("amcsearch_*.csv"):
        old.unlink()
    stack = None
    metrics_url = None
    target = args.target
    try:
        if target is None:
            from loadtests.stack import start_stack

            work = args.out / "stack"
            shutil.rmtree(work, ignore_errors=True)
            log.info("starting the stack from %s", args.repository)
            stack = start_stack(args.repository, work)
            target = stack.address("search")
            metrics_url = stack.processes["query_encoder"].endpoints["metrics"]
        load = loaddata.build(args.seeded, args.to_index)
        data_file = args.out / "data.json"
        load.save(data_file)
        started = time.monotonic()
        seed_index(target, load)
        log.info("seeded %d images in %.1fs", len(load.seeded), time.monotonic() - started)
        before = query_cache_counts(metrics_url)
        rc = run_locust(
            target, data_file, prefix, args.users, args.spawn_rate, args.run_time, args.shape, hard_limit=duration + 120
        )
        after = query_cache_counts(metrics_url)
        removed = remove_load_images(target, load.all_ids())
        log.info("removed %d load-test images", removed)
    finally:
        if stack is not None:
            stack.stop()

    rows = read_stats(prefix)
    failures = read_failures(prefix)
    total = next((r for r in rows if r.name == "Aggregated"), None)
    print(
        f"\nlocust: {args.shape if args.shape == 'step' else f'{args.users} users'}, {duration:.0f}s, "
        f"target {target}; CSV: {prefix}_*.csv\n"
    )
    print(table(rows))
    if before and after:
        hits, misses = after[0] - before[0], after[1] - before[1]
        if hits + misses:
            print(
                f"\nQueryEncoder cache hit ratio during the run (queries and the rescorer's keyword vectors): "
                f"{hits / (hits + misses):.2f} ({hits:.0f} hits, {misses:.0f} misses)"
            )
    if failures:
        print("\nfailures:")
        for name, error, count in failures:
            print(f"  {count:>5} x {name}: {error}")
    if total is None or total.requests == 0:
        print("\nno request completed", file=sys.stderr)
        return 1
    if rc != 0 or total.failures:
        print(f"\nFAILED: {total.failures} failed requests (locust exit code {rc})", file=sys.stderr)
        return 1
    print(f"\n{total.requests} requests, 0 failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
