"""The builders' command line: the options every builder shares, the tail every build ends with, and
``extdm-build-dataset NAME ...``, which runs the builder ``NAME`` with the rest of the arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import datasets

from . import BUILDERS, BuildError, get_builder
from .splits import write_splits


def base_parser(description: str, default_image_size: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--raw_dir", type=Path, help="folder with (or to receive, with --download) the raw files")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the DatasetDict is saved")
    parser.add_argument("--image_size", type=int, default=default_image_size, help="frame height (and width) in pixels")
    parser.add_argument("--download", action="store_true", help="download missing raw files into --raw_dir first")
    parser.add_argument("--mirror_url", default=None, help="base URL to download from instead of the official one")
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="also push the DatasetDict to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create a private repo")
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild splits that exist but were built with other settings"
    )
    parser.add_argument("--writer_batch_size", type=int, default=None, help="rows per Arrow record batch")
    return parser


def require_raw_dir(args: argparse.Namespace) -> Path:
    if args.raw_dir is None:
        raise BuildError("--raw_dir is required: the folder that holds (or, with --download, will hold) the raw files")
    if args.image_size <= 0:
        raise BuildError(f"--image_size must be a positive number of pixels, got {args.image_size}")
    if args.download:
        args.raw_dir.mkdir(parents=True, exist_ok=True)
    if not args.raw_dir.is_dir():
        raise BuildError(f"--raw_dir {args.raw_dir} does not exist (pass --download to fetch the raw files)")
    return args.raw_dir


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a builder's ``main``; a ``BuildError`` becomes a one-line message and exit status 2."""
    try:
        main(argv)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def write_and_publish(
    args: argparse.Namespace,
    splits: Mapping[str, tuple[Callable[..., Iterator[dict]], dict]],
    features: datasets.Features,
    default_writer_batch_size: int,
) -> datasets.DatasetDict:
    """What every build ends with: write the splits to ``--output_dir``, say what was saved, push to the Hub
    when ``--push_to_hub`` names a repo."""
    dataset = write_splits(args.output_dir, splits, features,
                           writer_batch_size=args.writer_batch_size or default_writer_batch_size,
                           overwrite=args.overwrite)
    sizes = {split: len(part) for split, part in dataset.items()}
    print(f"saved {sizes} to {args.output_dir}")
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub, private=args.private)
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    """``extdm-build-dataset NAME [builder options]``: the installed entry point of every builder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="extdm-build-dataset",
        description="Build an ExtDM benchmark dataset; `extdm-build-dataset NAME --help` lists NAME's options.",
    )
    parser.add_argument("name", choices=sorted(BUILDERS), help="the dataset to build")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the builder's options")
    args = parser.parse_args(argv[:1])
    return run_cli(get_builder(args.name).main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
