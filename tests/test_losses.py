import pytest
import torch

import losses
from configs.ddpm import cifar10
from sde_lib import DDPMSchedule


class _Const(torch.nn.Module):
  """eps model returning zeros: the loss is then mean(eps^2) ~ 1."""

  def __init__(self):
    super().__init__()
    self.w = torch.nn.Parameter(torch.zeros(()))

  def forward(self, x, t):
    return x * self.w


def test_loss_is_mean_squared_eps_error():
  model, s = _Const(), DDPMSchedule()
  x0 = torch.zeros(64, 3, 8, 8)
  loss = losses.ddpm_loss(model, s, x0, torch.Generator().manual_seed(0))
  assert loss.item() == pytest.approx(1.0, abs=0.02)
  again = losses.ddpm_loss(model, s, x0, torch.Generator().manual_seed(0))
  assert again.item() == loss.item()  # a function of the generator only


class _Oracle(torch.nn.Module):
  """Knows x0, so it returns the true eps of x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al.,
  Eq. 4), plus ``bias``; it records the timesteps it is given."""

  def __init__(self, schedule, x0, bias):
    super().__init__()
    self.schedule, self.x0, self.bias, self.seen = schedule, x0, bias, []

  def forward(self, x, t):
    self.seen.append(t)
    return self.schedule.eps_from_x0(x.double(), t.long(), self.x0.double()).float() + self.bias


@pytest.mark.parametrize('bias', [0.0, 0.3])
def test_loss_of_an_oracle_is_its_squared_bias(bias):
  """The loss pairs eps with the x_t and t it made: an exact eps predictor scores bias^2, whatever t is."""
  s = DDPMSchedule()
  x0 = torch.rand(256, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
  model = _Oracle(s, x0, bias)
  loss = losses.ddpm_loss(model, s, x0, torch.Generator().manual_seed(0)).item()
  assert loss == pytest.approx(bias ** 2, abs=1e-7)  # an off-by-one t gives ~1e-4
  t = model.seen[0]
  assert t.dtype == torch.float32 and t.shape == (256,) and torch.equal(t, t.round())  # integer labels
  assert t.min() >= 0 and t.max() <= s.T - 1 and t.min() < 50 and t.max() > s.T - 50  # t ~ U{0..T-1}


def test_warmup_and_clipping():
  config = cifar10.get_config()
  assert losses.learning_rate(config, 0) == 0.0
  assert losses.learning_rate(config, 2500) == pytest.approx(1e-4)
  assert losses.learning_rate(config, 10 ** 6) == pytest.approx(2e-4)
  p = torch.nn.Parameter(torch.zeros(4))
  p.grad = torch.full((4,), 10.0)
  opt = losses.get_optimizer(config, [p])
  norm, lr = losses.optimization_step(config, opt, [p], 5000)
  assert norm == pytest.approx(20.0) and lr == pytest.approx(2e-4)
  assert torch.linalg.norm(p.grad).item() == pytest.approx(1.0, rel=1e-5)  # clipped to grad_clip
  config.optim.optimizer = 'SGD'
  with pytest.raises(ValueError, match='config.optim.optimizer'):
    losses.get_optimizer(config, [p])
