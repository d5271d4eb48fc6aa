"""DDPM on downsampled ImageNet 64x64 (npz batches)."""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'IMAGENET64'
  config.data.root = 'data/imagenet64'
  config.data.image_size = 64
  config.data.eval_split = 'validation'
  config.sampling.gls_dtype = 'float32'
  return config
