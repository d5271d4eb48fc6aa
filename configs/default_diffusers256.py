"""Defaults of the 256x256 google/ddpm-* family (CelebA-HQ, LSUN church / bedroom / cat, and their ddpm-ema-*
versions), sampled from their diffusers folders (docs/diffusers.md). Their UNet2DModel is the 'ssb' U-Net at six
levels: block_out_channels (128, 128, 256, 256, 512, 512), two ResBlocks per level, attention at 16x16, GroupNorm
32 with eps 1e-6. Data: a folder of images (data.dataset='IMAGEFOLDER', docs/data.md "Image folders"). A dataset
file sets data.root and model.pretrained.
"""
from configs.default_ddpm import get_default_configs


def get_default_diffusers256_configs():
  config = get_default_configs()
  config.data.dataset = 'IMAGEFOLDER'
  config.data.image_size = 256
  config.data.random_flip = False
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0
  config.sampling.batch_size = 16
  config.training.snapshot_num_samples = 16
  config.eval.batch_size = 16
  config.eval.num_samples = 1000
  config.eval.methods = ('ddim', 'pndm', 'dpmpp_2m', 'unipc')
  config.eval.num_steps = (5, 10)
  config.eval.t_starts = (400, 600, 800)
  config.sampling.gls_rank = 16  # the full covariance of D = 196,608 would take 288 GiB (samplers/low_rank_fit.py)
  return config
