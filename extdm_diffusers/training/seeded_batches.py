"""Deterministic data order and noise: every random draw of training is a function of ``(seed, epoch,
position)`` or ``(seed, step, process)``: the data order and each item's augmentation (``SeededBatchSampler`` +
``SeededItems``) and the noise, timesteps and transforms of a step (``step_generator``). A run resumed from a
checkpoint therefore sees exactly the batches and noise of an uninterrupted run with the same seed."""

from __future__ import annotations

import math
from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def seed_sequence(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: different tuples give unrelated seeds)."""
    return int(np.random.SeedSequence([int(v) % (2**63) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batches_per_epoch(num_items: int, num_repeats: int, global_batch: int) -> int:
    return math.ceil(num_items * num_repeats / global_batch)


class SeededBatchSampler(Sampler):
    """Global batches of ``(item, item_seed)``, from batch ``start`` on, ``num_batches`` of them. Epoch ``e``
    is a permutation of ``num_repeats x N`` items (``DatasetRepeater``-style repeats) drawn from ``(seed, e)``,
    cut into batches of ``batch_size`` (the last one is topped up from the start of the permutation, so every
    batch is full); each item's seed comes from ``(seed, e, position)``. Under several processes accelerate's
    ``split_batches`` gives each process its slice of every batch."""

    def __init__(self, num_items: int, batch_size: int, seed: int, num_repeats: int = 1, start: int = 0,
                 num_batches: int = 0):
        self.num_items, self.batch_size, self.seed, self.num_repeats = num_items, batch_size, seed, num_repeats
        self.start, self.num_batches = start, num_batches
        self.drop_last = False
        self.per_epoch = batches_per_epoch(num_items, num_repeats, batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def epoch_order(self, epoch: int) -> List[int]:
        total = self.num_items * self.num_repeats
        generator = torch.Generator().manual_seed(seed_sequence(self.seed, epoch, 1))
        order = torch.randperm(total, generator=generator).tolist()
        return order + order[: self.per_epoch * self.batch_size - total]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, order = None, []
        for index in range(self.start, self.start + self.num_batches):
            e, b = divmod(index, self.per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            yield [(order[p] % self.num_items, seed_sequence(self.seed, epoch, 2, p))
                   for p in range(b * self.batch_size, (b + 1) * self.batch_size)]


class SeededItems(Dataset):
    """Item ``(index, seed)`` is ``dataset[index]`` drawn with torch's RNG seeded by ``seed``: random starts,
    pair distances and augmentations no longer depend on workers or on what ran before."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def seeded_loader(dataset: Dataset, global_batch: int, seed: int, num_repeats: int, start: int, num_batches: int,
                  num_workers: int) -> DataLoader:
    """The ``num_batches`` global batches from batch ``start`` on, for ``accelerator.prepare``."""
    sampler = SeededBatchSampler(len(dataset), global_batch, seed, num_repeats, start, num_batches)
    return DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=num_workers)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one optimizer step's noise, timesteps and transforms on process ``rank``; torch's
    global RNG is seeded from the same triple (for anything inside the models that draws from it)."""
    value = seed_sequence(seed, step, rank, 3)
    torch.manual_seed(seed_sequence(seed, step, rank, 4))
    return torch.Generator(device=device).manual_seed(value)
