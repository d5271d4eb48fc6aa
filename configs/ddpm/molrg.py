"""DDPM on a mixture of low-rank Gaussians (Wang et al. 2024; docs/gen.md): D = 3*4*4 = 48, K = 2, d = 7.

The data are already in model space (centered = False: no [0,1] scaling). Used for the Jacobian-rank study.
"""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'MOLRG'
  config.data.root = ''
  config.data.image_size = 4
  config.data.num_channels = 3
  config.data.centered = False
  config.data.random_flip = False
  config.data.molrg_classes = 2
  config.data.molrg_rank = 7
  config.data.molrg_n_per_class = 350
  config.data.molrg_seed = 0
  config.model.nf = 64
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = ()
  config.model.dropout = 0.0
  config.model.ema_rate = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup = 100
  config.training.batch_size = 128
  config.training.n_iters = 3000
  config.training.log_freq = 25
  config.training.snapshot_freq = 1000
  config.training.snapshot_freq_for_preemption = 250
  config.training.num_workers = 0
  config.training.snapshot_sampling = False
  config.eval.num_samples = 700
  config.eval.batch_size = 700
  return config
