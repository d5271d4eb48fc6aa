import numpy as np
import pytest
import torch

from sde_lib import DDPMSchedule


def test_linear_betas_match_ho_et_al():
  s = DDPMSchedule()
  assert s.T == 1000 and s.beta.dtype == torch.float64
  np.testing.assert_allclose(s.beta.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
  np.testing.assert_allclose(s.alpha_bar_table.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)


def test_alpha_bar_convention_and_interpolation():
  s = DDPMSchedule()
  assert s.alpha_bar(-1).item() == 1.0
  assert s.alpha_bar(0).item() == pytest.approx(1 - 1e-4)
  assert s.alpha_bar(999).item() == pytest.approx(s.alpha_bar_table[-1].item(), rel=1e-12)
  t = torch.tensor([-1, 0, 10, 999])
  np.testing.assert_allclose(s.alpha_bar(t)[1:].numpy(), s.alpha_bar_table[t[1:]].numpy(), rtol=1e-12)
  mid = s.alpha_bar(10.5).item()  # geometric mean of the neighbours
  assert mid == pytest.approx(np.sqrt(s.alpha_bar(10).item() * s.alpha_bar(11).item()), rel=1e-12)
  assert s.alpha_bar(-0.5).item() == pytest.approx(np.sqrt(s.alpha_bar(0).item()), rel=1e-12)
  with pytest.raises(ValueError, match='out of range'):
    s.alpha_bar(1000)
  with pytest.raises(ValueError, match='out of range'):
    s.alpha_bar(-2)


def test_q_sample_and_inverses_round_trip():
  s = DDPMSchedule()
  g = torch.Generator().manual_seed(0)
  x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
  t = torch.tensor([0, 10, 500, 999])
  x_t = s.q_sample(x0, t, eps)
  a = s.alpha_bar_table[t].float().view(-1, 1, 1, 1)
  torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
  torch.testing.assert_close(s.x0_from_eps(x_t, t, eps), x0, atol=1e-3, rtol=1e-4)
  torch.testing.assert_close(s.eps_from_x0(x_t, t, x0), eps, atol=1e-4, rtol=1e-4)
  torch.testing.assert_close(s.q_sample(x0, -1, eps), x0)  # alpha_bar(-1) = 1: clean data


def test_continuous_view_matches_discrete():
  s = DDPMSchedule()
  # docs/schedule.md: the discrete betas are beta(s) / T on the grid s_i = i / (T - 1).
  grid = np.arange(1000) / 999
  np.testing.assert_allclose(s.beta_continuous(grid) / 1000, s.beta.numpy(), rtol=1e-12)
  np.testing.assert_allclose(s.theta_continuous(np.array([0.0, 0.5, 1.0])) ** 2,
                             s.alpha_bar(torch.tensor([-1, 499, 999])).numpy(), rtol=1e-2, atol=5e-6)
