"""google/ddpm-celebahq-256 (or ddpm-ema-celebahq-256) from its diffusers folder; data: a folder of celebahq images
(configs/default_diffusers256.py, docs/diffusers.md)."""
from configs.default_diffusers256 import get_default_diffusers256_configs


def get_config():
  config = get_default_diffusers256_configs()
  config.data.root = 'data/celebahq256'  # <root>/train/*.png|jpg (and <root>/test/ for the floor row)
  config.model.pretrained = 'pretrained/ddpm-celebahq-256'
  return config
