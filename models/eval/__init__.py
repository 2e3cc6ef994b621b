def evaluation_parser(prog: str, description: str, out: str):
    """The arguments every evaluation command shares: the size and seed of `make models`, where its
    checkpoints and corpus cache are, and the file to write."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--size", choices=("ci", "demo", "full"), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", type=Path, default=Path("build/checkpoints"))
    parser.add_argument("--corpus-cache", type=Path, default=Path("build/corpus"))
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser
