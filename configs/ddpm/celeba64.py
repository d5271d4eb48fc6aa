"""DDPM on CelebA 64x64 (centre crop 140, resize 64)."""
from configs.ddpm import celeba


def get_config():
  config = celeba.get_config()
  config.data.image_size = 64
  config.sampling.gls_dtype = 'float32'  # D = 12288: the covariance is 0.6 GB in float32
  return config
