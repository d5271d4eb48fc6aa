"""One home for planning and drawing samples: the run spec, the sampling plan and the sample loop. Nothing here
reads the config: the edge (sample_lib, eval_lib, run_lib, experiments) reads ``config.sampling`` once into a
``RunSpec`` and hands it down, with an initialiser factory from late_start.py (which also chooses t_c
automatically). The weights come from models/checkpoints.py.

A *plan* (``sampling_plan``) is everything a sampler run needs, built in one place so that the grid and the
initial state can never disagree: the descending timesteps, the initialiser drawn at ``timesteps[0]``, the
sampler function with its options, and the NFE. Every caller (the sample mode, training snapshots, the eval
sweep, the SSB and GEN experiments, the benchmarks) builds its runs here.

Grids and start times (docs/samplers.md, "Time grids"): ``late_start`` starts at t_start by construction.
DDIM's ``uniform`` and ``quad`` grids take t_start as the top of their range and usually start below it
(n = 3, t_start = 200 gives (134, 67, 0)). A vanilla start N(0, I) carries no time, so it is drawn at the grid's
first time, as DDIM does. A Gaussian late start is a state *at* t_c: when the grid does not start at t_start
the plan is refused before any work, with a message that names the grid and both times.
"""
import dataclasses
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

import dist_util
import io_util
import rng
import samplers
from errors import InputError
from samplers import get_sampler, grids, initialisers, nfe as count_nfe


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One sampler run, as the config describes it (``from_config``); frozen, so a value has one source.

  method: a samplers.SAMPLERS name. num_steps: grid points n >= 1. t_start: the grid's top (int in [0, T-1]) or
  'auto' (the edge replaces it with late_start.choose_t_start's choice before planning). init: 'normal' (N(0, I))
  or 'gls' (the Gaussian late start). grid: a samplers.grids kind. options: the sampler's keyword options as
  sorted (name, value) pairs (a dict is accepted). timesteps: an explicit descending grid, which overrides grid,
  num_steps and t_start (e.g. the SSB potentials' grid), or None.
  """
  method: str
  num_steps: int
  t_start: Union[int, str]
  init: str = 'normal'
  grid: str = 'late_start'
  options: tuple = ()
  timesteps: Optional[tuple] = None

  def __post_init__(self):
    opts = self.options.items() if isinstance(self.options, dict) else self.options
    object.__setattr__(self, 'options', tuple(sorted((str(k), v) for k, v in opts)))
    if self.timesteps is not None:
      object.__setattr__(self, 'timesteps', tuple(int(t) for t in self.timesteps))
      object.__setattr__(self, 'num_steps', len(self.timesteps))
      object.__setattr__(self, 't_start', self.timesteps[0])
    if self.t_start != 'auto':
      object.__setattr__(self, 't_start', int(self.t_start))
    object.__setattr__(self, 'num_steps', int(self.num_steps))
    if self.init not in initialisers.INITS:
      raise InputError(f'sampling.init={self.init!r} is unknown; choose one of {initialisers.INITS}')

  @classmethod
  def from_config(cls, sampling, **changes):
    """The spec of ``config.sampling`` with ``changes`` (field=value) applied; the sampler's options are read from
    ``sampling`` for the final method unless ``options`` is among the changes. The one place a run's settings
    are read from the config."""
    fields = dict(method=sampling.method, num_steps=sampling.num_steps, t_start=sampling.t_start,
                  init=sampling.init, grid=sampling.grid)
    fields.update(changes)
    if fields.get('options') is None:
      try:
        fields['options'] = samplers.options(fields['method'], sampling)
      except ValueError as err:  # an unknown method names sampling.method
        raise InputError(str(err)) from err
    return cls(**fields)

  def replace(self, **changes):
    """A copy with ``changes`` applied (options stay unless given)."""
    return dataclasses.replace(self, **changes)

  @property
  def kwargs(self):
    """The sampler's keyword options as a dict."""
    return dict(self.options)

  @property
  def key(self):
    """The eval cell name, e.g. ``ddim_n10_gls_tc400_late_start``."""
    return f'{self.method}_n{self.num_steps}_{self.init}_tc{self.t_start}_{self.grid}'

  def record(self):
    """The fields a results record keeps (json-ready)."""
    return dict(method=self.method, num_steps=self.num_steps, init=self.init, t_start=self.t_start, grid=self.grid)


class SamplingPlan(NamedTuple):
  """What one sampler run needs. ``timesteps[0] == initialiser.t_start`` always holds."""
  method: str
  timesteps: tuple      # descending ints, the first is where x_init lives
  initialiser: object   # samplers.initialisers.StandardNormal or GaussianLateStart at timesteps[0]
  sampler: object       # samplers.SAMPLERS[method]
  options: dict         # sampler keyword options (eta, pndm variant)
  nfe: int              # network calls per sample

  @property
  def t_start(self):
    return self.timesteps[0]


def sampling_plan(spec, schedule, make_initialiser):
  """The plan of the run ``spec`` (a RunSpec) on ``schedule`` (sde_lib.DDPMSchedule).

  make_initialiser(t_start, init) -> the initialiser at t_start (late_start.initialiser_factory: the config's
  late-start fit, its moments and cache). Raises InputError before any work for an impossible grid or a gls start
  that is not the grid's first time.
  """
  checked = check_plan(spec, schedule)
  return checked._replace(initialiser=make_initialiser(checked.t_start, spec.init))


def check_plan(spec, schedule):
  """Everything of ``sampling_plan`` except the initialiser (whose fit can be costly): the grid, the start-time
  rule, the sampler and its NFE. Returns a SamplingPlan whose initialiser is None."""
  if spec.t_start == 'auto':
    raise InputError("t_start='auto' must be chosen (late_start.choose_t_start) before the run is planned")
  T, timesteps = schedule.T, spec.timesteps
  try:
    if timesteps is None:
      betas = schedule.beta.double().numpy() if spec.grid in grids.SCHEDULE_GRIDS else None
      timesteps = grids.make_grid(spec.grid, spec.num_steps, spec.t_start, T, betas=betas)
      if spec.init == 'gls' and timesteps[0] != spec.t_start:
        raise InputError(
            f'sampling.grid={spec.grid} with n={len(timesteps)} starts at t={timesteps[0]}, not at sampling.t_start='
            f'{spec.t_start}: a Gaussian late start is a state at t_start, so the first step must be there. Use '
            f'--config.sampling.grid=late_start (it starts at t_start), or set --config.sampling.t_start='
            f'{timesteps[0]}')
      samplers.check_grid(spec.method, spec.grid)
    timesteps = tuple(grids.check_timesteps(timesteps, T))
    sampler = get_sampler(spec.method)
    count = count_nfe(spec.method, len(timesteps), **spec.kwargs)
  except InputError:
    raise
  except ValueError as err:  # grid and sampler checks name the config field
    raise InputError(str(err)) from err
  return SamplingPlan(spec.method, timesteps, None, sampler, spec.kwargs, count)



def check_early(spec, schedule):
  """check_plan before the model is loaded: t_start 'auto' (chosen later) is checked at T-1, and a grid computed
  from the data (grids.DATA_GRIDS, resolved later by late_start.resolve_grid) by the late_start grid's rules, which
  it shares (n <= t_start + 1, first point at t_start)."""
  if spec.t_start == 'auto':
    spec = spec.replace(t_start=schedule.T - 1)
  return check_plan(spec.replace(grid='late_start') if spec.grid in grids.DATA_GRIDS else spec, schedule)

def generate(eps_fn, schedule, plan, num_samples, batch_size, seed, device, inverse_scaler, progress=True,
             desc='sample', callback=None):
  """Draws ``num_samples`` images with ``plan``; sample i uses generator sample_seed(seed, i) for its start and
  its step noise.

  Returns float32 numpy (N, C, H, W) in [0, 1] (clipped), independent of ``batch_size`` and, under torchrun,
  of the number of processes (each draws its share of the indices; every rank gets the gathered result).
  callback: the samplers' per-step callback(t, x, x0_pred) (samplers.trajectory), handed to every batch in turn;
  a samplers.trajectory.Trajectory of a one-batch run (num_samples <= batch_size, one process) holds its path.
  """
  out = []
  indices = dist_util.shard(range(num_samples))
  for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress or not dist_util.is_main(),
                    dynamic_ncols=True):
    gens = rng.per_sample_generators(seed, indices[start:start + batch_size])
    x_init = plan.initialiser.sample(len(gens), gens).to(device, torch.float32)
    x0 = plan.sampler(eps_fn, schedule, x_init, plan.timesteps, generator=gens,
                      callback=callback, **plan.options)
    out.append(inverse_scaler(x0).clamp(0.0, 1.0).float().cpu().numpy())
  shape = (0, *plan.initialiser.shape)
  images = dist_util.gather_ordered(np.concatenate(out) if out else np.zeros(shape, np.float32), indices,
                                    num_samples)
  return images


def save_grid(images, path, nrow=None):
  """Saves (N, C, H, W) float images in [0, 1] as one PNG grid (nearest-upscaled when tiny)."""
  import torchvision
  x = torch.as_tensor(images[:256])
  if x.shape[-1] < 32:
    x = torch.nn.functional.interpolate(x, scale_factor=max(1, 32 // x.shape[-1]), mode='nearest')
  nrow = nrow or int(np.ceil(np.sqrt(len(x))))
  return io_util.atomic_write(path, lambda f: torchvision.utils.save_image(x, f, format='png', nrow=nrow,
                                                                          padding=2, pad_value=1.0))
