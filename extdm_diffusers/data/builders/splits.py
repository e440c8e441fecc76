"""Resumable split writing: a builder describes its splits as generators of rows; ``write_splits`` streams each
generator through ``datasets.Dataset.from_generator`` into a temporary folder and renames it into place only
once complete. A split folder therefore either holds a whole split or does not exist, so a re-run skips finished
splits (when they were built with the same settings) and never duplicates rows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping

import datasets

from . import BuildError

BUILD_INFO_FILE = "extdm_build.json"


def build_settings(dataset_dir: str | os.PathLike, split: str = "train") -> dict | None:
    """The arguments the project's builder made ``dataset_dir/<split>`` with (its ``extdm_build.json``: the
    generator's name and keyword arguments), or None where the split was not built here."""
    path = Path(dataset_dir) / split / BUILD_INFO_FILE
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    return {"generator": recorded["generator"], "kwargs": recorded["kwargs"]}


def _generate_rows(make_rows: Callable[..., Iterator[dict]], kwargs: dict) -> Iterator[dict]:
    yield from make_rows(**kwargs)


def write_splits(
    output_dir: Path,
    splits: Mapping[str, tuple[Callable[..., Iterator[dict]], dict]],
    features: datasets.Features,
    *,
    writer_batch_size: int = 64,
    overwrite: bool = False,
) -> datasets.DatasetDict:
    """Build each split as ``output_dir/<split>`` and write ``dataset_dict.json``: a ``load_from_disk``-able DatasetDict.

    ``splits`` maps a split name to ``(row_generator, kwargs)``. The kwargs and the
    features are stored with the split as its settings; a finished split with the
    same settings is skipped, one with other settings is an error unless ``overwrite``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, (make_rows, kwargs) in splits.items():
        settings = json.loads(
            json.dumps({"generator": make_rows.__name__, "kwargs": kwargs, "features": features.to_dict()}, default=str)
        )
        split_dir = output_dir / split
        info_path = split_dir / BUILD_INFO_FILE
        if split_dir.exists():
            previous = json.loads(info_path.read_text()) if info_path.exists() else None
            if previous == settings:
                print(f"{split}: already built in {split_dir}, skipping")
                continue
            if not overwrite:
                raise BuildError(
                    f"{split_dir} already holds a {split} split built with other settings ({previous}); pass "
                    "--overwrite to rebuild it or choose another --output_dir"
                )
            shutil.rmtree(split_dir)
        staging = output_dir / f".{split}.incomplete"
        cache = output_dir / f".{split}.cache"
        for leftover in (staging, cache):  # an interrupted earlier run
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            dataset = datasets.Dataset.from_generator(
                _generate_rows,
                features=features,
                gen_kwargs={"make_rows": make_rows, "kwargs": kwargs},
                cache_dir=str(cache),
                writer_batch_size=writer_batch_size,
                split=datasets.NamedSplit(split),
            )
        except datasets.exceptions.DatasetGenerationError as error:
            # the builder's own BuildError arrives wrapped; surface its message
            cause = error.__cause__ or error.__context__
            if isinstance(cause, BuildError):
                raise cause from None
            raise
        dataset.save_to_disk(str(staging))
        (staging / BUILD_INFO_FILE).write_text(json.dumps(settings, indent=2))
        del dataset
        os.replace(staging, split_dir)
        shutil.rmtree(cache, ignore_errors=True)
    (output_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return datasets.load_from_disk(str(output_dir))
