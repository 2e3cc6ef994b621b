"""Is training reproducible? Train from scratch N times on one seed and compare what comes out.

    python -m models.train.reproduce --size ci --runs 2 --out benchmarks/REPRODUCIBILITY.md

Each run is a fresh `python -m models.train` process (the path `make models` takes) with its own
corpus cache, checkpoint folder and model repository, so nothing is shared between runs but the
code, the seed and the thread count. Then every checkpoint is compared tensor by tensor (the
largest absolute difference of any parameter) and every exported model by its content (every
archive entry but the random id torch.jit.save adds). The first module that differs names the stage where the runs part: later stages
start from it and differ too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.export.triton_repo import model_digest


def train_once(size: str, seed: int, folder: Path) -> float:
    """One `make models` run into `folder`; its wall time in seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "models.train", "--size", size, "--seed", str(seed)]
    command += ["--repository", str(folder / "repository"), "--checkpoints", str(folder / "checkpoints")]
    command += ["--corpus-cache", str(folder / "corpus")]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def checkpoint_difference(first: Path, second: Path) -> float:
    """Largest absolute difference over every tensor of two state_dict files (inf if their keys
    or shapes differ)."""
    a = torch.load(first, map_location="cpu", weights_only=True)
    b = torch.load(second, map_location="cpu", weights_only=True)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()]
    return max(diffs, default=0.0)


def compare(runs: list[Path], size: str) -> tuple[list[tuple[str, float]], list[tuple[str, bool]]]:
    """(checkpoint name, largest difference from run 1 over the other runs) and (exported model,
    every run's model.pt has run 1's content: its model_digest, every archive entry but torch's
    random serialization id)."""
    reference = runs[0] / "checkpoints" / size
    checkpoints = []
    for path in sorted(reference.glob("*.pt")):
        worst = max(checkpoint_difference(path, run / "checkpoints" / size / path.name) for run in runs[1:])
        checkpoints.append((path.stem, worst))
    exports = []
    for path in sorted((runs[0] / "repository").glob("*/1/model.pt")):
        relative = path.relative_to(runs[0] / "repository")
        digest = model_digest(path.read_bytes())
        same = all(model_digest((run / "repository" / relative).read_bytes()) == digest for run in runs[1:])
        exports.append((relative.parts[0], same))
    return checkpoints, exports


def report(size: str, seed: int, seconds: list[float], checkpoints, exports) -> str:
    identical = all(d == 0.0 for _, d in checkpoints) and all(same for _, same in exports)
    lines = [
        "## Reproducibility of training",
        "",
        f"`python -m models.train.reproduce --size {size} --seed {seed} --runs {len(seconds)}`: "
        f"{len(seconds)} runs of `make models` from scratch (own corpus cache each), "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}, "
        f"{' / '.join(f'{s:.0f} s' for s in seconds)}, load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "Verdict: " + ("every checkpoint and every exported model is identical." if identical else "the runs differ."),
        "",
        "| checkpoint | largest parameter difference across runs |",
        "| --- | --- |",
        *[f"| {name} | {diff:.3g} |" for name, diff in checkpoints],
        "",
        "| exported model | model.pt identical across runs (every archive entry but torch's random serialization id) |",
        "| --- | --- |",
        *[f"| {name} | {'yes' if same else 'no'} |" for name, same in exports],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.train.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="ci")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/REPRODUCIBILITY.md"))
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        runs = [work / f"run-{i + 1}" for i in range(args.runs)]
        seconds = []
        for run in runs:
            seconds.append(train_once(args.size, args.seed, run))
            print(f"[reproduce] {run}: {seconds[-1]:.0f} s", flush=True)
        checkpoints, exports = compare(runs, args.size)
    text = report(args.size, args.seed, seconds, checkpoints, exports)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
