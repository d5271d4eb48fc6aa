"""Command-line entry point (absl). One table of modes; each runs after the config is validated.

Examples:
  python main.py --config=configs/ddpm/digits.py --workdir=workdirs/digits --mode=all
  python main.py --config=configs/ddpm/digits.py --workdir=workdirs/digits --mode=sample \\
      --config.sampling.method=ddim --config.sampling.num_steps=5 --config.sampling.init=gls \\
      --config.sampling.t_start=500
Any config field can be overridden with --config.<section>.<field>=<value>. Input errors (a bad config value, a
missing or corrupt file, a foreign checkpoint, a diverged run, a busy workdir) end with one line naming the cause
and what to do; anything else is a bug and keeps its traceback.
"""
import importlib
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections.config_flags import config_flags

# --mode=NAME: (help text, 'module:function', workdir locks it takes). The function takes (config, workdir). A lock
# refuses a second run of the same kind in one workdir (two trainings, two sweeps) while it is held.
MODES = {
    'train': ('train the DDPM (resumes from the newest checkpoint in --workdir)', 'run_lib:train', ('train',)),
    'sample': ('draw config.sampling.num_samples with the configured sampler/init/t_start; writes .npz + PNG grid',
               'sample_lib:sample', ()),
    'gauss_stats': ('stream the training data once and write the late-start moments file',
                    'sample_lib:gauss_stats', ()),
    'fid_stats': ('write the FID reference statistics (and late-start moments) of the training split',
                  'eval_lib:fid_stats', ()),
    'export_diffusers': ('write the EMA weights as a diffusers DDPMPipeline folder (WORKDIR/diffusers) that '
                         'DDPMPipeline.from_pretrained loads', 'sample_lib:export_diffusers', ()),
    'eval': ('sweep samplers x steps x {vanilla, gls} x t_c; write results.{md,csv,json}, plots and grids',
             'eval_lib:evaluate', ('eval',)),
    'all': ('the main job: train, then fid_stats if missing, then eval; prints the table', 'eval_lib:main_job',
            ('train', 'eval')),
    'diversity': ('class composition of vanilla vs gls samples under a classifier, with intervals and a '
                  'chi-square test', 'experiments.ssb:diversity', ('diversity',)),
    'potentials': ('generative potential along a path between two samples, at several times',
                   'experiments.ssb:potentials', ('potentials',)),
    'late_start_curve': ('FID/KID of the ancestral sampler started from N(0, I) or gls at t, against t',
                         'experiments.ssb:late_start_curve', ('late_start_curve',)),
    'predicted_tc': ("data-only t_c: the largest t at which the generative drift's Jacobian at the noised data "
                     'mean has a positive eigenvalue (the flow there stops contracting)',
                     'experiments.ssb:predicted_tc', ('predicted_tc',)),
    'memorization': ('memorization -> generalization over training-set sizes, with reproducibility between two '
                     'independently trained models', 'experiments.gen:memorization', ('memorization',)),
    'rp_table': ('reproducibility (RP) between full-data models of different width, seed and U-Net variant, and '
                 'between DDIM and F-PNDM, all from the same noise', 'experiments.gen:rp_table', ('rp_table',)),
    'mem_score': ('memorization / generalization / kNN scores of config.analysis.samples_file vs the training set',
                  'experiments.gen:mem_score', ('mem_score',)),
    'jacobian_rank': ('Jacobian rank of the denoiser along a sampling trajectory', 'experiments.gen:jacobian_rank',
                      ('jacobian_rank',)),
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections), e.g. configs/ddpm/digits.py. '
                                'Override fields with --config.<section>.<field>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory: checkpoints, samples, TensorBoard logs, results.')
flags.DEFINE_enum('mode', 'train', list(MODES), 'What to run:\n' +
                  '\n'.join(f'  {k}: {v[0]}' for k, v in MODES.items()))
flags.DEFINE_string('sample_out', None, '--mode=sample: output .npz path (default: a name under '
                    '<workdir>/samples/ that encodes the settings).')
flags.mark_flags_as_required(['config', 'workdir'])


def input_errors():
  """The exception types that mean bad input (printed as one line); everything else is a bug."""
  from errors import InputError
  return (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FloatingPointError)


def run_mode(mode, config, workdir, **kwargs):
  """Validates the config, then runs ``mode`` (holding the workdir lock when the mode writes there)."""
  import workdir as wd
  from configs.validation import validate_config
  validate_config(config)
  import contextlib
  import dist_util
  from errors import stop_on_signals
  _, target, locks = MODES[mode]
  module, name = target.split(':')
  fn = getattr(importlib.import_module(module), name)
  with stop_on_signals(lambda signame, err: _stop_message(mode, workdir, signame, err)):
    if not locks or not dist_util.is_main():
      return fn(config, workdir, **kwargs)
    wd.ensure_writable(workdir)
    with contextlib.ExitStack() as stack:
      for lock in locks:
        stack.enter_context(wd.WorkdirLock(workdir, lock))
      return fn(config, workdir, **kwargs)


def _stop_message(mode, workdir, signame, err):
  """The 'stopped:' line of a mode ended by SIGTERM / SIGINT (training writes its own): what is kept, what to do.
  The eval sweep (--mode=eval, or --mode=all where eval_lib.evaluate is on the traceback) counts its finished cells."""
  import json
  import traceback
  import workdir as wd
  evaluate = getattr(sys.modules.get('eval_lib'), 'evaluate', None)
  running = [frame.f_code for frame, _ in traceback.walk_tb(err.__traceback__)]
  if mode == 'eval' or getattr(evaluate, '__code__', None) in running:
    path = os.path.join(wd.eval_dir(workdir), 'results.json')
    try:
      with open(path) as f:
        cells = len(json.load(f))
    except (OSError, ValueError, TypeError):
      cells = 0
    return f'{signame} during the eval sweep; {cells} finished cells are kept in {path}; run the same command to resume'
  return (f'{signame} during --mode={mode}; every file written so far is complete (all writes are atomic); run the '
          'same command again')


def main(argv):
  del argv
  from errors import Preempted
  logging.getLogger().setLevel(logging.INFO)
  kwargs = {'sample_out': FLAGS.sample_out} if FLAGS.mode == 'sample' else {}
  try:
    run_mode(FLAGS.mode, FLAGS.config, FLAGS.workdir, **kwargs)
  except input_errors() as err:  # bad input: one clear line, no traceback
    import dist_util  # under torchrun every failing rank reports its line before the group stops
    dist_util.exit_all(f'error: {type(err).__name__}: {err}', wait_s=30)
  except Preempted as err:  # SIGTERM / SIGINT: one line saying what is kept (training: the current step's checkpoint)
    import dist_util
    dist_util.exit_all(f'stopped: {err}', wait_s=30, code=err.exit_code)


def _check_arguments(argv):
  """Fails early with one line on a missing config file, one that is not a config file (not Python, no
  get_config()) or a misspelt --config.<field> override."""
  from configs.validation import ConfigError, check_override_fields, load_config_file
  paths = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  paths += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '--config']
  if not paths:
    return
  if not os.path.isfile(paths[-1]):
    sys.exit(f'error: config file {paths[-1]} not found; pass one of configs/ddpm/*.py')
  try:
    check_override_fields(load_config_file(paths[-1]), argv)
  except ConfigError as err:
    sys.exit(f'error: {err}')


if __name__ == '__main__':
  _check_arguments(sys.argv)
  app.run(main)
