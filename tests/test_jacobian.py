"""Tests for analysis/jacobian.py: Jacobians via torch.func and the 99%-energy rank (docs/gen.md)."""

import pytest
import torch
from torch import nn

import sde_lib
from analysis import denoiser as D
from analysis import jacobian as J


def test_linear_map_jacobian_and_known_rank():
  g = torch.Generator().manual_seed(0)
  A = torch.randn(12, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 12, generator=g, dtype=torch.float64)
  x0_fn = lambda x, t: (x.reshape(x.shape[0], -1) @ A.T).reshape(x.shape)
  x = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
  jac = J.denoiser_jacobian(x0_fn, x, 5)
  assert jac.shape == (4, 12, 12)
  torch.testing.assert_close(jac, A.expand(4, 12, 12))
  ranks = J.effective_rank(jac)
  assert ranks.tolist() == [3, 3, 3, 3]
  assert J.effective_rank(torch.eye(10, dtype=torch.float64)) == 10  # flat spectrum: needs all 10
  assert J.effective_rank(torch.zeros(5, 5)) == 0
  assert J.effective_rank(torch.eye(6), energy=1.0) == 6
  # chunked vmapped backward gives the same result
  torch.testing.assert_close(J.denoiser_jacobian(x0_fn, x, 5, chunk_size=5), jac)


def test_energy_definition():
  """s = (3, 2, 1): energies sqrt(9)=3, sqrt(13)=3.61, sqrt(14)=3.74; 0.9 * 3.74 = 3.37 -> r = 2."""
  jac = torch.diag(torch.tensor([3., 2., 1.], dtype=torch.float64))
  assert J.effective_rank(jac, energy=0.9) == 2
  assert J.effective_rank(jac, energy=0.99) == 3
  assert J.effective_rank(jac, energy=0.5) == 1
  with pytest.raises(ValueError, match='energy'):
    J.effective_rank(jac, energy=0)


class TinyNet(nn.Module):
  """Conv + GroupNorm + a self-attention over pixels: the U-Net's building blocks, tiny."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 8, 3, padding=1)
    self.norm = nn.GroupNorm(4, 8)
    self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
    self.out = nn.Conv2d(8, 2, 3, padding=1)

  def forward(self, x, t):
    h = torch.relu(self.norm(self.conv(x))) + 0.01 * t[:, None, None, None]
    b, c, hh, ww = h.shape
    seq = h.flatten(2).transpose(1, 2)
    seq = seq + self.attn(seq, seq, seq, need_weights=False)[0]
    return self.out(seq.transpose(1, 2).reshape(b, c, hh, ww))


def test_module_with_groupnorm_and_attention_matches_autograd():
  torch.manual_seed(0)
  net = TinyNet().double()
  for p in net.parameters():
    p.requires_grad_(False)
  schedule = sde_lib.DDPMSchedule()
  eps_fn = lambda x, t: net(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))
  x0_fn = lambda x, t: schedule.x0_from_eps(x, t, eps_fn(x, t))
  x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
  jac = J.denoiser_jacobian(x0_fn, x, torch.tensor([10., 400.]))
  for b, t in enumerate((10, 400)):
    ref = torch.autograd.functional.jacobian(lambda v: x0_fn(v.reshape(1, 2, 3, 3), t).reshape(-1),
                                             x[b].reshape(-1))
    torch.testing.assert_close(jac[b], ref)


def test_optimal_denoiser_rank_curve_and_files(tmp_path):
  """Optimal denoiser of 3 points: rank 0 at low noise (flat basins), a few directions at high noise."""
  schedule = sde_lib.DDPMSchedule()
  data = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  den = D.OptimalDenoiser(data, schedule)
  x_low = data + 0.01 * torch.randn(data.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  x_high = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
  rows = J.rank_curve(den.x0, [x_high, x_low, x_low], [900, 0, -1], schedule)
  assert [r['t'] for r in rows] == [900., 0.]  # t = -1 skipped
  assert rows[1]['rank'] == 0
  # the posterior-mean Jacobian is s/g^2 Cov_w(y): rank <= N - 1 = 2 (and > 0 when weights are mixed)
  assert 0 < rows[0]['rank'] <= 2 and rows[0]['rank_over_D'] == rows[0]['rank'] / 16
  assert rows[0]['noise_level'] > rows[1]['noise_level']
  from experiments import plots
  plots.plot_rank_curves({'optimal': rows}, str(tmp_path / 'r.png'))
  assert (tmp_path / 'r.png').stat().st_size > 1000


def test_project_unet_layers_under_torch_func():
  """models/layers.py blocks (GroupNorm(32), einsum attention, ResNet block with temb) under jacrev."""
  from models import layers  # the project's own module: an import failure is a failure, not a skip
  torch.manual_seed(0)
  net = nn.ModuleDict(dict(inp=nn.Conv2d(1, 32, 3, padding=1), res=layers.ResnetBlockDDPM(nn.SiLU(), 32, 32, 8),
                           attn=layers.AttnBlock(32), out=nn.Conv2d(32, 1, 3, padding=1))).double().eval()
  for p in net.parameters():
    p.requires_grad_(False)

  def x0_fn(x, t):
    temb = torch.full((x.shape[0], 8), float(t) / 1000, dtype=x.dtype)
    return net['out'](net['attn'](net['res'](net['inp'](x), temb)))

  x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
  jac = J.denoiser_jacobian(x0_fn, x, 3)
  ref = torch.autograd.functional.jacobian(lambda v: x0_fn(v.reshape(1, 1, 4, 4), 3).reshape(-1), x[1].reshape(-1))
  torch.testing.assert_close(jac[1], ref)
