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
