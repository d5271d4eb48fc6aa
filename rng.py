"""Explicit randomness: every random draw goes through a torch.Generator.

A *generator* argument is either one ``torch.Generator`` (the batch is drawn jointly) or a
sequence of generators, one per sample. Per-sample generators make results independent of
batch size and of the number of GPUs: sample i always sees the same noise stream.
Generators live on the CPU; draws are moved to ``device`` afterwards, so CPU and CUDA runs
start from identical numbers.
"""
from typing import Sequence, Union

import numpy as np
import torch

Generator = Union[torch.Generator, Sequence[torch.Generator]]


def sample_seed(seed: int, index: int) -> int:
  """The seed of sample ``index`` in a run seeded with ``seed``: a 32-bit integer.

  torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so seeds must live in [0, 2^32).
  Each run seed gets a pseudo-random 32-bit offset (numpy SeedSequence) and sample i uses offset + i, so the
  samples of one run never share a seed, and two runs' streams overlap only with probability ~2N / 2^32.
  """
  offset = int(np.random.SeedSequence(int(seed) % 2 ** 63).generate_state(1, np.uint32)[0])
  return (offset + int(index)) % 2 ** 32


def per_sample_generators(seed: int, indices) -> list:
  """One CPU generator per sample index, seeded by :func:`sample_seed`."""
  return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


def randn(shape, generator: Generator, device='cpu', dtype=torch.float32):
  """Standard normal draw of ``shape`` (first dim = batch) from ``generator``; see module doc."""
  if isinstance(generator, torch.Generator) or generator is None:
    out = torch.randn(shape, generator=generator, dtype=dtype)
  else:
    if len(generator) != shape[0]:
      raise ValueError(f'{len(generator)} per-sample generators for a batch of {shape[0]}')
    out = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator])
  return out.to(device)
