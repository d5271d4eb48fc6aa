"""Training objective and optimiser (SSB / score_sde defaults; docs/model.md)."""
import torch

import rng
from errors import ConfigError


def ddpm_loss(model, schedule, x0, generator, rows=None):
  """The eps-prediction loss mean((eps_theta(x_t, t) - eps)^2) over all elements (reduce_mean).

  x0: (B, C, H, W) data in model space ([-1, 1]); t ~ U{0..T-1}, eps ~ N(0, I), both drawn from
  ``generator`` (a CPU torch.Generator) so that a run is a function of its seed and step only.
  rows: (rank, world) when x0 holds rows rank, rank + world, ... of a global batch of world * B rows (torchrun):
  t and eps are drawn for the whole global batch and this rank's rows taken, so each row gets the numbers it
  gets in one process. None: x0 is the whole batch.
  """
  rank, world = rows or (0, 1)
  b = x0.shape[0] * world
  t = torch.randint(0, schedule.T, (b,), generator=generator)[rank::world]
  eps = rng.randn((b, *x0.shape[1:]), generator)[rank::world].to(x0.device)
  x_t = schedule.q_sample(x0, t, eps)  # x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps
  eps_pred = model(x_t, t.to(x0.device, torch.float32))
  return torch.mean((eps_pred - eps) ** 2)


def get_optimizer(config, params):
  """Adam(lr, (beta1, beta2), eps, weight_decay) from ``config.optim``."""
  if config.optim.optimizer != 'Adam':
    raise ConfigError(f'config.optim.optimizer={config.optim.optimizer!r} is not supported; use "Adam"')
  return torch.optim.Adam(params, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                          eps=config.optim.eps, weight_decay=config.optim.weight_decay,
                          foreach=True)  # multi-tensor update; PyTorch's CPU default is the slower per-tensor loop


def learning_rate(config, step):
  """Linear warm-up, lr * min(step / warmup, 1); ``step`` counts from 0 for the first update."""
  warmup = config.optim.warmup
  return config.optim.lr * (min(step / warmup, 1.0) if warmup > 0 else 1.0)


def optimization_step(config, optimizer, params, step):
  """Set the warm-up lr, clip the gradient norm at ``config.optim.grad_clip`` and step.

  Returns the gradient norm before clipping (a float) and the lr used.
  """
  lr = learning_rate(config, step)
  for group in optimizer.param_groups:
    group['lr'] = lr
  clip = config.optim.grad_clip if config.optim.grad_clip > 0 else float('inf')
  grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip)
  optimizer.step()
  return float(grad_norm), lr
