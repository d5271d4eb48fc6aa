"""Checks a resolved config before any work starts; every error names the offending field.

Every list of choices it checks against is the owning module's own registry, imported here, so a new sampler,
grid, data set or backend is accepted the moment it is registered.
"""
from datasets import DATASETS
from errors import ConfigError  # noqa: F401 (validation.ConfigError stays a public name; it lives in errors.py)
from fid_backend import BACKENDS as FID_BACKENDS
from models import diffusers_io
from models.ddpm import check_model_config, num_groups
from models.utils import PRECISIONS  # training.precision / eval.precision (models.utils.autocast)
from samplers import SAMPLERS
from samplers import low_rank_fit
from samplers.grids import ALL_GRID_KINDS
from samplers.initialisers import GLS_DTYPES, GLS_FITS, INITS
from samplers.pndm import VARIANTS as PNDM_VARIANTS

MODELS = ('ddpm',)


def _require(ok, field, value, why):
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: {why}')


def _choice(config, field, choices, upper=False):
  section, name = field.split('.')
  value = config[section][name]
  key = value.upper() if upper and isinstance(value, str) else value
  _require(key in choices, field, value, f'choose one of {", ".join(choices)}')


def _positive(config, field):
  section, name = field.split('.')
  value = config[section][name]
  _require(value > 0, field, value, 'must be > 0')


def validate_config(config):
  """Raises ConfigError for an unknown dataset/model/method or an impossible value."""
  _choice(config, 'data.dataset', DATASETS, upper=True)
  _choice(config, 'model.name', MODELS)
  for field in ('training.batch_size', 'training.n_iters', 'training.log_freq', 'training.eval_freq',
                'training.snapshot_freq', 'training.snapshot_freq_for_preemption', 'data.image_size',
                'data.num_channels', 'model.nf', 'model.num_res_blocks', 'model.num_scales',
                'optim.lr', 'sampling.num_samples', 'sampling.batch_size', 'eval.batch_size',
                'eval.num_samples'):
    _positive(config, field)
  check_model_config(config)  # the architecture's checks live with the model (variant, nonlinearity, sizes, groups)
  if config.model.get('pretrained'):  # the folder's config.json and scheduler config against this run's config
    diffusers_io.check_config(config, config.model.pretrained)
  _require(0.0 <= config.model.ema_rate < 1.0, 'model.ema_rate', config.model.ema_rate, 'must be in [0, 1)')
  _require(0 < config.model.beta_min < config.model.beta_max, 'model.beta_min', config.model.beta_min,
           'need 0 < beta_min < beta_max')
  _require(config.optim.warmup >= 0, 'optim.warmup', config.optim.warmup, 'must be >= 0')
  _choice(config, 'optim.optimizer', ('Adam',))
  _require(config.optim.lr <= 1.0, 'optim.lr', config.optim.lr, 'must be in (0, 1] (the paper trains at 2e-4)')
  _validate_sampling(config)
  _validate_analysis(config)
  _validate_eval(config)
  _validate_fast_paths(config)


def _validate_fast_paths(config):
  """precision in PRECISIONS; compile, tf32 and channels_last are booleans (a string 'False' would be truthy)."""
  for field in ('training.precision', 'eval.precision'):
    _choice(config, field, PRECISIONS)
  for field in ('training.compile', 'training.tf32', 'eval.compile', 'model.channels_last'):
    section, name = field.split('.')
    value = config[section][name]
    _require(isinstance(value, bool), field, value, 'must be True or False')


def _validate_eval(config):
  e = config.eval
  _choice(config, 'eval.fid_backend', FID_BACKENDS)
  _require(e.num_samples >= 2, 'eval.num_samples', e.num_samples, 'FID and KID need at least 2 samples per cell')
  _require(len(e.methods) >= 1, 'eval.methods', tuple(e.methods), f'name at least one sampler of {tuple(SAMPLERS)}')
  _require(len(e.num_steps) >= 1, 'eval.num_steps', tuple(e.num_steps), 'name at least one step count n')


def _validate_analysis(config):
  a = config.analysis
  groups = num_groups(config)
  _require(a.rp_model_b_nf >= groups and a.rp_model_b_nf % groups == 0, 'analysis.rp_model_b_nf',
           a.rp_model_b_nf, f'must be a positive multiple of model.num_groups = {groups} (the GroupNorm group count)')
  per_size = tuple(a.get('mem_n_iters_per_size', ()))
  _require(not per_size or len(per_size) == len(a.mem_sizes), 'analysis.mem_n_iters_per_size', per_size,
           f'needs one entry per analysis.mem_sizes {tuple(a.mem_sizes)}, or () for mem_n_iters everywhere')
  _require(all(int(k) >= 1 for k in per_size) and a.mem_n_iters >= 1, 'analysis.mem_n_iters_per_size',
           per_size, f'training steps must be >= 1 (mem_n_iters = {a.mem_n_iters})')
  _require(a.diversity_num_samples >= 2, 'analysis.diversity_num_samples', a.diversity_num_samples, 'must be >= 2')
  for m in a.diversity_methods:
    _require(m in SAMPLERS, 'analysis.diversity_methods', tuple(a.diversity_methods),
             f'{m!r} is not one of {tuple(SAMPLERS)}')


def _validate_sampling(config):
  s, T = config.sampling, config.model.num_scales
  _choice(config, 'sampling.method', tuple(SAMPLERS))
  _choice(config, 'sampling.init', INITS)
  _choice(config, 'sampling.grid', ALL_GRID_KINDS)
  _choice(config, 'sampling.pndm_variant', PNDM_VARIANTS)
  _choice(config, 'sampling.gls_fit', GLS_FITS)
  _choice(config, 'sampling.gls_dtype', tuple(GLS_DTYPES))
  _require(s.num_steps >= 1, 'sampling.num_steps', s.num_steps, 'must be >= 1')
  if s.t_start == 'auto':
    _require(s.init == 'gls', 'sampling.t_start', 'auto', "chooses a late-start time: it needs sampling.init=gls")
    _require(s.grid == 'late_start', 'sampling.t_start', 'auto',
             'needs sampling.grid=late_start (the only grid that starts at every candidate t_c)')
  else:
    _require(isinstance(s.t_start, int) and 0 <= s.t_start <= T - 1, 'sampling.t_start', s.t_start,
             f"must be an integer in [0, {T - 1}] (T = {T}) or 'auto'")
    _require(s.num_steps <= s.t_start + 1, 'sampling.num_steps', s.num_steps,
             f'cannot exceed t_start + 1 = {s.t_start + 1} distinct timesteps')
  _require(s.auto_tc_samples >= 1, 'sampling.auto_tc_samples', s.auto_tc_samples, 'must be >= 1')
  _require(1 <= s.auto_tc_stride < T, 'sampling.auto_tc_stride', s.auto_tc_stride, f'must be in [1, {T - 1}]')
  _require(s.gls_rank >= 0, 'sampling.gls_rank', s.gls_rank, 'must be >= 0 (0 = full covariance)')
  dim = config.data.num_channels * config.data.image_size ** 2
  too_big = low_rank_fit.full_covariance_bytes(dim) > low_rank_fit.FULL_COVARIANCE_MAX_BYTES
  _require(not (too_big and s.gls_rank == 0 and (s.init == 'gls' or len(config.eval.t_starts))), 'sampling.gls_rank',
           s.gls_rank, f'the full covariance of D = {dim} pixels would take '
           f'{low_rank_fit.full_covariance_bytes(dim) / 2 ** 30:.0f} GiB; set sampling.gls_rank=r (e.g. 16 or 64) for '
           'the rank-r plus diagonal late start, which is fitted without it')
  _require(s.eta == -1 or 0 <= s.eta <= 1, 'sampling.eta', s.eta,
           'must be in [0, 1] (DDIM eta: 0 deterministic, 1 the fast DDPM) or -1 for the method\'s own')
  _require(s.checkpoint >= -1, 'sampling.checkpoint', s.checkpoint,
           'must be a snapshot index >= 0 (checkpoints/checkpoint_{index}.pth) or -1 for the newest')
  for m in config.eval.methods:
    _require(m in SAMPLERS, 'eval.methods', tuple(config.eval.methods), f'{m!r} is not one of {tuple(SAMPLERS)}')
  for n in config.eval.num_steps:
    _require(n >= 1, 'eval.num_steps', tuple(config.eval.num_steps), 'every n must be >= 1')
  for t in config.eval.t_starts:
    _require(t == 'auto' or (isinstance(t, int) and 0 <= t <= T - 1), 'eval.t_starts', tuple(config.eval.t_starts),
             f"every t_c must be an integer in [0, {T - 1}] or 'auto'")
  for cell in config.eval.cells:
    method, _, n = str(cell).partition(':')
    _require(method in config.eval.methods and n.isdigit() and int(n) in config.eval.num_steps, 'eval.cells',
             tuple(config.eval.cells), f"{cell!r} is not 'method:n' with the method in eval.methods and n in "
             'eval.num_steps')
  for field in ('methods', 'num_steps', 't_starts', 'grids', 'cells'):  # ml_collections joins a tuple override given twice
    values = tuple(config.eval[field])
    twice = sorted({v for v in values if values.count(v) > 1}, key=str)
    _require(not twice, f'eval.{field}', values, f'lists {twice[0] if twice else ""!r} more than once (each cell would '
             'run twice; note that a tuple override given twice on the command line is joined, not replaced)')
  for t in config.eval.t_starts:  # a late start at t_c has at most t_c + 1 distinct timesteps
    short = [n for n in config.eval.num_steps if t != 'auto' and n > t + 1]
    _require(not short, 'eval.t_starts', tuple(config.eval.t_starts),
             f'holds t_c={t}, which gives no cell for n={short[0] if short else ""} (a late start at t_c has at most '
             f't_c + 1 distinct timesteps, so n <= t_c + 1); drop t_c={t} or those n from eval.num_steps')
  uses_auto = s.t_start == 'auto' or 'auto' in config.eval.t_starts
  _require(not uses_auto or (s.gls_fit == 'exact' and s.gls_rank == 0), 'sampling.gls_rank', s.gls_rank,
           f"t_c 'auto' needs the full-covariance late start (sampling.gls_fit=exact, sampling.gls_rank=0; "
           f'gls_fit is {s.gls_fit})')
  for g in config.eval.grids:
    _require(g in ALL_GRID_KINDS, 'eval.grids', tuple(config.eval.grids), f'{g!r} is not one of {ALL_GRID_KINDS}')
  _require(len(config.eval.grids) >= 1, 'eval.grids', tuple(config.eval.grids), 'needs at least one grid')
  _require('auto' not in config.eval.t_starts or tuple(config.eval.grids) == ('late_start',), 'eval.t_starts',
           tuple(config.eval.t_starts), "'auto' needs eval.grids=('late_start',) (the grid its rule was built on)")


def check_override_fields(config, argv):
  """Rejects ``--config.<path>=...`` arguments whose path is not a field of ``config``.

  ml_collections would otherwise fail with a bare AttributeError deep in flag parsing.
  """
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node = config
    for i, part in enumerate(path.split('.')):
      if not hasattr(node, 'keys') or part not in node.keys():
        parent = 'config.' + '.'.join(path.split('.')[:i]) if i else 'config'
        known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else '(not a section)'
        raise ConfigError(f'unknown config field config.{path}: {parent} has no field {part!r}. '
                          f'Known fields of {parent}: {known}')
      node = node[part]


_A_CONFIG_FILE = ('a config file is a Python file whose get_config() returns an ml_collections ConfigDict: pass one '
                  'of configs/ddpm/*.py or a copy of one')


def load_config_file(path):
  """``get_config()`` of a config file given by path (as --config does: any file name). ConfigError, one line, for
  a file that is not Python, defines no get_config(), or whose get_config() returns no ConfigDict."""
  import importlib.machinery
  import importlib.util
  import ml_collections
  loader = importlib.machinery.SourceFileLoader('_config_under_check', path)  # any suffix, as absl loads it
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  try:
    loader.exec_module(module)
  except (SyntaxError, ValueError) as err:  # not Python text (ValueError: null bytes, undecodable bytes)
    where = f', line {err.lineno}' if getattr(err, 'lineno', None) else ''
    raise ConfigError(f'config file {path} is not Python ({type(err).__name__}{where}): {_A_CONFIG_FILE}') from None
  if not callable(getattr(module, 'get_config', None)):
    raise ConfigError(f'config file {path} defines no get_config(): {_A_CONFIG_FILE}')
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'config file {path}: get_config() returned {type(config).__name__}, not a ConfigDict: '
                      f'{_A_CONFIG_FILE}')
  return config
