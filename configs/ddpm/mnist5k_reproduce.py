"""The MNIST table's reproduction subset, from the shipped model (assets/models/mnist5k), in float32.

  python main.py --config=configs/ddpm/mnist5k_reproduce.py --workdir=workdirs/mnist5k_reproduce --mode=all

No training (model.pretrained): the FID statistics of the 4,000 training images if missing, then 12 cells of the
MNIST job's sweep, 1,000 samples each with its per-sample seeds: every sampler at n = 10 and DDIM at n = 3, vanilla
and gls at t_c = 500. The U-Net runs in float32 (eval.precision), so every host computes the same samples up to
float32 round-off and the same FID to 2 decimals; the published table's own precision is stated in its notes.
"""
from configs.ddpm import mnist5k


def get_config():
  config = mnist5k.get_config()
  config.model.pretrained = 'assets/models/mnist5k'
  config.eval.precision = 'fp32'
  config.eval.num_steps = (3, 10)
  config.eval.t_starts = (500,)
  config.eval.cells = ('ddpm:10', 'ddim:10', 'pndm:10', 'dpmpp_2m:10', 'unipc:10', 'ddim:3')
  return config
