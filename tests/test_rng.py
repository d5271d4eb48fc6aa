import pytest
import torch

import rng


def test_per_sample_draws_do_not_depend_on_batching():
  gens = rng.per_sample_generators(7, range(6))
  full = rng.randn((6, 3, 2), gens)
  parts = [rng.randn((2, 3, 2), rng.per_sample_generators(7, range(i, i + 2))) for i in (0, 2, 4)]
  torch.testing.assert_close(full, torch.cat(parts))
  assert not torch.allclose(full[0], full[1])


def test_seeds_are_distinct_and_shared_generator_works():
  seeds = {rng.sample_seed(s, i) for s in range(3) for i in range(100)}
  assert len(seeds) == 300
  # one generator: the batch is one joint draw, the same numbers as torch.randn with that generator
  joint = rng.randn((4, 5), torch.Generator().manual_seed(1), dtype=torch.float64)
  assert joint.dtype == torch.float64
  torch.testing.assert_close(joint, torch.randn((4, 5), generator=torch.Generator().manual_seed(1),
                                                dtype=torch.float64))
  # per-sample generators: row i is the stream of sample_seed(seed, i), whatever the batch
  rows = rng.randn((3, 5), rng.per_sample_generators(1, [4, 0, 9]))
  for row, i in zip(rows, [4, 0, 9]):
    torch.testing.assert_close(row, torch.randn(5, generator=torch.Generator().manual_seed(rng.sample_seed(1, i))))


def test_generator_count_mismatch_is_an_error():
  with pytest.raises(ValueError, match='per-sample generators'):
    rng.randn((3, 2), rng.per_sample_generators(0, range(2)))


def test_neighbouring_run_seeds_give_different_noise():
  # torch's CPU generator keeps only 32 bits of a seed: seeds 0 and 1 once collided (2^32 + i == i).
  draws = [rng.randn((3, 4), rng.per_sample_generators(s, range(3))) for s in (0, 1, 2, 43)]
  for i in range(len(draws)):
    for j in range(i + 1, len(draws)):
      assert not torch.allclose(draws[i], draws[j])
  assert all(0 <= rng.sample_seed(s, 10 ** 6) < 2 ** 32 for s in (0, 1, 2 ** 40))
