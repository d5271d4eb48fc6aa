"""Samplers (docs/samplers.md): plain functions with one signature,

  sampler(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None, **options) -> x0


x_init is the state at timesteps[0] (drawn by samplers.initialisers, which samplers never
import); timesteps is a descending int grid (samplers.grids); the last step goes to t = -1. callback(t, x, x0_pred)
sees every grid point (samplers.trajectory.Trajectory records them); the return value is always x0 alone.
"""
from samplers import grids
from samplers.ddim import ddim
from samplers.ddpm import ddpm, is_full_chain
from samplers.dpm_solver import dpmpp_2m
from samplers.pndm import pndm
from samplers.pndm import nfe as _pndm_nfe
from samplers.unipc import unipc

SAMPLERS = {'ddpm': ddpm, 'ddim': ddim, 'pndm': pndm, 'dpmpp_2m': dpmpp_2m, 'unipc': unipc}


def get_sampler(name):
  """The sampler function called ``name`` (sampling.method)."""
  if name not in SAMPLERS:
    raise ValueError(f'unknown sampling.method {name!r}; choose one of {sorted(SAMPLERS)}')
  return SAMPLERS[name]


def nfe(method, num_steps, **options):
  """Network calls of ``method`` for ``num_steps`` steps (report it beside n).

  options: ``variant`` for pndm (samplers.pndm.VARIANTS, default 'f-pndm'; the samplers.pndm
  doc gives each one's NFE, e.g. plms n + 1, plms-euler n); others are ignored. ddpm and ddim
  make one call per step (the full chain too: num_steps = t_start + 1 calls).
  """
  get_sampler(method)
  if int(num_steps) < 1:
    raise ValueError(f'sampling.num_steps must be >= 1, got {num_steps}')
  if method == 'pndm':
    return _pndm_nfe(num_steps, options.get('variant', 'f-pndm'))
  return int(num_steps)
