"""DDPM on CIFAR-10 32x32 (SSB / score_sde numbers)."""
from configs.default_ddpm import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = 'CIFAR10'
  config.data.root = 'data/cifar10'
  return config
