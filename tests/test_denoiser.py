"""Tests for analysis/denoiser.py: the optimal empirical denoiser (docs/gen.md)."""
import pytest
import torch

import sde_lib
from analysis import denoiser as D


def _brute_x0(x, data, a):
  """Unstreamed softmax posterior mean: x (B, D), data (N, D), a float."""
  d2 = ((x[:, None, :] - a ** 0.5 * data[None]) ** 2).sum(-1)
  w = torch.softmax(-d2 / (2 * (1 - a)), dim=1)
  return w @ data


@pytest.fixture
def setup():
  g = torch.Generator().manual_seed(0)
  data = torch.randn(37, 2, 3, 3, generator=g, dtype=torch.float64)
  x = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
  return sde_lib.DDPMSchedule(), data, x


@pytest.mark.parametrize('t', [50, 300, 700])
def test_matches_brute_force(setup, t):
  schedule, data, x = setup
  den = D.OptimalDenoiser(data, schedule, chunk_size=8)
  a = float(schedule.alpha_bar(t))
  ref = _brute_x0(x.reshape(5, -1), data.reshape(37, -1), a).reshape(x.shape)
  torch.testing.assert_close(den.x0(x, t), ref, rtol=1e-9, atol=1e-9)
  eps = den(x, t)
  torch.testing.assert_close(eps, (x - a ** 0.5 * ref) / (1 - a) ** 0.5, rtol=1e-8, atol=1e-8)


def test_chunked_equals_unchunked_and_per_sample_t(setup):
  schedule, data, x = setup
  t = torch.tensor([0., 10., 100.5, 500., 999.])
  full = D.OptimalDenoiser(data, schedule, chunk_size=4096).x0(x, t)
  for chunk in (1, 5, 36):
    torch.testing.assert_close(D.OptimalDenoiser(data, schedule, chunk_size=chunk).x0(x, t), full)
  for i in range(5):  # row i uses its own t
    torch.testing.assert_close(full[i:i + 1], D.OptimalDenoiser(data, schedule).x0(x[i:i + 1], float(t[i])))


def test_small_t_gives_nearest_training_image(setup):
  schedule, data, _ = setup
  den = D.OptimalDenoiser(data, schedule, chunk_size=7)
  target = data[[3, 20, 36]]
  x = target + 0.01 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  torch.testing.assert_close(den.x0(x, 0), target, atol=1e-6, rtol=0)
  torch.testing.assert_close(den.x0(x, -1), target)  # exact nearest neighbour at alpha_bar = 1
  mixed = den.x0(x, torch.tensor([-1., 0., 999.]))
  torch.testing.assert_close(mixed[0], target[0])
  with pytest.raises(ValueError, match='undefined'):
    den.eps(x, -1)


def test_large_t_gives_data_mean(setup):
  schedule, data, x = setup
  den = D.OptimalDenoiser(data, schedule)
  out = den.x0(x, schedule.T - 1)  # alpha_bar ~ 4e-5: logits spread ~0.1, weights near uniform
  torch.testing.assert_close(out, data.mean(0, keepdim=True).expand_as(out), atol=5e-2, rtol=0)


def test_float32_input_and_flat_data(setup):
  schedule, data, x = setup
  flat = D.OptimalDenoiser(data.reshape(37, -1).float(), schedule, dtype=torch.float32)
  out = flat.x0(x.reshape(5, -1).float(), 200)
  assert out.dtype == torch.float32 and out.shape == (5, 18)
  ref = D.OptimalDenoiser(data, schedule).x0(x, 200).reshape(5, -1).float()
  torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_shape_mismatch_error_names_both_shapes(setup):
  schedule, data, _ = setup
  den = D.OptimalDenoiser(data, schedule)
  with pytest.raises(ValueError, match=r'\(4, 2, 4, 4\).*\(2, 3, 3\)'):
    den.x0(torch.zeros(4, 2, 4, 4), 10)


def test_budget_errors(setup):
  schedule, data, x = setup
  with pytest.raises(D.DenoiserBudgetError, match='chunk_size must be >= 1'):
    D.OptimalDenoiser(data, schedule, chunk_size=0)
  with pytest.raises(D.DenoiserBudgetError, match='training set too large'):
    D.OptimalDenoiser(data, schedule, max_elements=100)  # 37 x 18 = 666 > 100
  den = D.OptimalDenoiser(data, schedule, chunk_size=37, max_elements=1000)
  with pytest.raises(D.DenoiserBudgetError, match='smaller batch'):
    den.x0(torch.cat([x, x]), 10)  # 37 x (18 + 10) = 1036 > 1000
  den.x0(x, 10)  # 37 x (18 + 5) = 851 fits
  with pytest.raises(ValueError, match='numpy'):
    D.OptimalDenoiser([1, 2, 3], schedule)


def test_ddim_chain_returns_training_image(setup):
  """Run the exact eps through a DDIM chain: the sample lands on a training point (it memorises)."""
  schedule, data, _ = setup
  den = D.OptimalDenoiser(data, schedule)
  x = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
  ts = list(range(999, -1, -50)) + [-1]
  for t, t_next in zip(ts[:-1], ts[1:]):
    x0 = den.x0(x, t)
    eps = schedule.eps_from_x0(x, t, x0)
    a_next = schedule.alpha_bar(t_next)
    x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
  d2 = ((x.reshape(3, 1, -1) - data.reshape(1, 37, -1)) ** 2).sum(-1)
  assert float(d2.min(1).values.max()) < 1e-6


@pytest.mark.gpu
def test_cuda_matches_cpu(setup):
  schedule, data, x = setup
  cpu = D.OptimalDenoiser(data, schedule, chunk_size=8).x0(x, 300)
  for dtype in (torch.float64, torch.float32):
    gpu = D.OptimalDenoiser(data, schedule, chunk_size=8, device='cuda', dtype=dtype).x0(x.cuda(), 300)
    assert gpu.device.type == 'cuda'
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4 if dtype == torch.float32 else 1e-9, rtol=1e-4)
