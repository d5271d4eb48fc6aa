"""Does the late start still help on the schedules people use? The digits part of the schedules study.

  python main.py --config=configs/ddpm/digits_schedules.py --workdir=workdirs/digits_schedules --mode=all

No training: the shipped main-job model (assets/models/digits). Fast DDPM, DDIM, DPM-Solver++ and UniPC at n = 3, 5,
10 on five grids (samplers/grids.py): the SSB paper's `late_start` (uniform in t), `karras` (Karras et al. 2022,
rho = 7), `logsnr` (uniform in log-SNR, DPM-Solver's default), diffusers' `trailing`, and `gaussian_opt` (the grid that
minimises the sampler's error on the data's fitted Gaussian, samplers/gaussian_opt.py); vanilla and the Gaussian
late start at each t_c of eval.t_starts (on every grid the late start begins at t_c exactly). 200 samples per cell
with the main job's per-sample seeds; resumable (finished cells are kept). Every cell lands in eval/results_all.csv.
"""
from configs.ddpm import digits


def get_config():
  config = digits.get_config()
  config.model.pretrained = 'assets/models/digits'
  config.eval.methods = ('ddpm', 'ddim', 'dpmpp_2m', 'unipc')
  config.eval.num_steps = (3, 5, 10)
  config.eval.grids = ('late_start', 'karras', 'logsnr', 'trailing', 'gaussian_opt')
  config.eval.t_starts = (100, 200, 300, 400, 600)
  return config
