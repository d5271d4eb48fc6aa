"""DDPM on scikit-learn's embedded 8x8 digits (no download); sized for a 2-core CPU.

Measured on 2 CPU cores (docs/data.md): nf 32, ch_mult (1, 2), attention at 4x4, lr 1e-3 with a
short warmup, EMA 0.999 gives recognisable digits after ~2,300 steps at batch 128.
"""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'DIGITS'
  config.data.root = ''
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.random_flip = False
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1  # ~0.70M parameters (docs/data.md)
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.ema_rate = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup = 100
  config.training.n_iters = 2200  # under 5 min on 2 CPU cores (7.8-9 steps/s)
  config.training.log_freq = 25
  config.training.eval_freq = 100
  config.training.snapshot_freq = 550
  config.training.snapshot_freq_for_preemption = 100
  config.training.num_workers = 0
  config.sampling.batch_size = 1000
  # The main job's reduced sweep, sized so that train + fid_stats + eval fit in 15 minutes on 2 CPU cores
  # (the FID Inception runs at ~11 images/s there). Widen it on a bigger machine, e.g.
  # --config.eval.methods="('ddpm','ddim','pndm')" --config.eval.num_steps="(3,5,10)".
  config.eval.methods = ('ddim', 'pndm', 'dpmpp_2m', 'unipc')
  config.eval.num_steps = (3, 5)
  config.eval.t_starts = (200, 400)  # predicted_tc on digits is 405
  config.eval.num_samples = 200
  config.eval.batch_size = 200
  config.eval.kid_subset_size = 200
  config.analysis.late_start_ts = (999, 800, 600, 500, 400, 300, 200, 100)
  config.analysis.late_start_samples = 200
  # --mode=memorization: two models per n (A nf 32 seed 42, B nf 64 seed 43) for n in (16, 64, 256, 1497). Small n
  # get more steps (they are cheap: batch = n) so that they memorize; 800 steps everywhere left n = 16 at
  # memorization 0.25; these steps give 0.75 and RP(A, B) 0.635 at n = 16, the whole run 26 min on 2 cores
  # (docs/results_gen.md). mem_n_iters (800) is also each --mode=rp_table model's length.
  config.analysis.mem_n_iters = 800
  config.analysis.mem_n_iters_per_size = (4000, 2000, 800, 800)
  config.analysis.mem_num_samples = 200
  return config
