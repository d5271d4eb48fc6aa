"""Ho et al.'s CIFAR-10 DDPM from its diffusers folder (google/ddpm-cifar10-32, FID 3.17 in the paper), sampled and
swept here without training (docs/diffusers.md). Its UNet2DModel is this code base's 'ssb' U-Net of cifar10.py:
35,746,307 parameters, nf 128, ch_mult (1, 2, 2, 2), two ResBlocks per level, attention at 16x16.

  python main.py --config=configs/ddpm/cifar10_diffusers.py --workdir=workdirs/ho_cifar10 --mode=all \\
      --config.model.pretrained=/path/to/ddpm-cifar10-32 --config.data.root=/path/to/cifar10
"""
from configs.ddpm import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.pretrained = 'pretrained/ddpm-cifar10-32'  # a UNet2DModel or DDPMPipeline folder (or HF snapshot)
  config.model.dropout = 0.0  # sampling only
  return config
