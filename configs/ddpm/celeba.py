"""DDPM on CelebA 32x32 (centre crop 140, resize 32)."""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'CELEBA'
  config.data.root = 'data/celeba'
  config.data.image_size = 32
  config.data.eval_split = 'validation'
  return config
