"""Samplers (docs/samplers.md): plain functions with one signature,

  sampler(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None, **options) -> x0


x_init is the state at timesteps[0] (drawn by samplers.initialisers, which samplers never
import); timesteps is a descending int grid (samplers.grids); the last step goes to t = -1. callback(t, x, x0_pred)
sees every grid point (samplers.trajectory.Trajectory records them); the return value is always x0 alone.

``SAMPLERS`` holds one record per sampler (``Sampler``): its function, its name in tables, its NFE rule, how its
options are read from ``config.sampling``, its deterministic stand-in for the auto t_c rule and the grids it accepts.
Adding a sampler is one module plus one entry here (``register``); nothing else names the samplers.
"""
import dataclasses
from typing import Callable

from samplers import grids
from samplers.ddim import ddim
from samplers.ddpm import ddpm, is_full_chain
from samplers.dpm_solver import dpmpp_2m
from samplers.pndm import pndm
from samplers.pndm import nfe as _pndm_nfe
from samplers.unipc import unipc


def _one_call_per_step(num_steps, **options):
  return int(num_steps)


def _no_options(sampling):
  return {}


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Everything the code base needs to know of one sampler.

  fn: the sampler function (signature above). display: its name in tables and plots. nfe(num_steps, **options):
  network calls for a grid of num_steps points. options(config.sampling) -> the keyword options it takes from the
  config (the sample file name and the eval cell's signature include them). proxy: the deterministic sampler whose
  exact Gaussian KL stands in for this one in the auto t_c rule ('' = itself). grids: the sampling.grid kinds it
  accepts (() = every grid)."""
  fn: Callable
  display: str
  nfe: Callable = _one_call_per_step
  options: Callable = _no_options
  proxy: str = ''
  grids: tuple = ()


def _ddim_options(sampling):
  return {'eta': float(sampling.eta)} if sampling.eta >= 0 else {}  # eta < 0: the method's own default (0)


def _pndm_options(sampling):
  return {'variant': sampling.pndm_variant}


def _pndm_calls(num_steps, variant='f-pndm', **options):
  return _pndm_nfe(num_steps, variant)


SAMPLERS = {
    'ddpm': Sampler(ddpm, 'DDPM', proxy='ddim'),  # the fast DDPM of a short grid, the ancestral chain of a full one
    'ddim': Sampler(ddim, 'DDIM', options=_ddim_options),
    'pndm': Sampler(pndm, 'PNDM', nfe=_pndm_calls, options=_pndm_options),
    'dpmpp_2m': Sampler(dpmpp_2m, 'DPM-Solver++'),
    'unipc': Sampler(unipc, 'UniPC'),
}


def register(name, record):
  """Adds (or replaces) the sampler ``name``; sampling.method, eval.methods and the tables accept it at once."""
  SAMPLERS[name] = record


def record(name):
  """The Sampler record called ``name`` (sampling.method)."""
  if name not in SAMPLERS:
    raise ValueError(f'unknown sampling.method {name!r}; choose one of {sorted(SAMPLERS)}')
  return SAMPLERS[name]


def get_sampler(name):
  """The sampler function called ``name`` (sampling.method)."""
  return record(name).fn


def options(name, sampling):
  """The keyword options of sampler ``name`` read from ``config.sampling``."""
  return dict(record(name).options(sampling))


def display_name(name):
  return record(name).display


def proxy(name):
  """The deterministic sampler that stands in for ``name`` in the auto t_c rule."""
  return record(name).proxy or name


def check_grid(name, grid):
  """Raises ValueError naming sampling.grid when sampler ``name`` does not run on ``grid``."""
  accepted = record(name).grids
  if accepted and grid not in accepted:
    raise ValueError(f'sampling.method={name} does not run on sampling.grid={grid}; it accepts {accepted}')


def nfe(method, num_steps, **options):
  """Network calls of ``method`` for ``num_steps`` steps (report it beside n).

  options: ``variant`` for pndm (samplers.pndm.VARIANTS, default 'f-pndm'; the samplers.pndm
  doc gives each one's NFE, e.g. plms n + 1, plms-euler n); others are ignored. ddpm and ddim
  make one call per step (the full chain too: num_steps = t_start + 1 calls).
  """
  spec = record(method)
  if int(num_steps) < 1:
    raise ValueError(f'sampling.num_steps must be >= 1, got {num_steps}')
  return spec.nfe(num_steps, **options)
