"""``extdm-benchmark``: print a benchmark (a registry entry or a file over one) as a complete, editable JSON file.

    extdm-benchmark show kth > my-benchmark.json        # edit, then pass --benchmark my-benchmark.json
    extdm-benchmark show my-partial.json                # what a partial file resolves to, validated
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .benchmarks import BENCHMARKS, BenchmarkDefinitionError, load_benchmark


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="extdm-benchmark", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print a benchmark as complete JSON (every field, the file format of --benchmark)")
    show.add_argument("benchmark", metavar="NAME_OR_FILE", help=f"one of {sorted(BENCHMARKS)} or a .json/.yaml benchmark file")
    args = parser.parse_args(argv)
    try:
        benchmark = load_benchmark(args.benchmark)
    except (BenchmarkDefinitionError, KeyError, TypeError) as error:
        parser.exit(2, f"{parser.prog}: error: {error.args[0] if isinstance(error, KeyError) else error}\n")
    try:
        sys.stdout.write(json.dumps(benchmark.to_dict(), indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `extdm-benchmark show kth | head`: the reader has all it wanted (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
