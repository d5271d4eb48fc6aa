"""Command-line entry point (absl). Every mode is a function in run_lib; this file only dispatches.

Examples:
  python main.py --config=configs/ddpm/digits.py --workdir=workdirs/digits --mode=train
  python main.py --config=configs/ddpm/digits.py --workdir=workdirs/digits --mode=sample \
      --config.sampling.method=ddim --config.sampling.num_steps=5 --config.sampling.init=gls \
      --config.sampling.t_start=500
Any config field can be overridden with --config.<section>.<field>=<value>.
"""
import logging
import sys

from absl import app
from absl import flags
from ml_collections.config_flags import config_flags

MODE_HELP = {
    'train': 'train the DDPM (resumes from the newest checkpoint in --workdir)',
    'sample': 'draw config.sampling.num_samples with the configured sampler/init/t_start; writes .npz + PNG grid',
    'gauss_stats': 'stream the training data once and write the late-start moments file',
    'fid_stats': 'write the FID reference statistics (and late-start moments) of the training split',
    'eval': 'sweep samplers x steps x {vanilla, gls} x t_c, write results.{md,csv,json}, plots and grids',
    'all': 'the main job: train, then fid_stats, then eval; prints the table',
    'diversity': 'class composition of vanilla vs gls samples under a classifier',
    'potentials': 'generative potential along a path between two samples, at several times',
    'late_start_curve': 'FID/KID of the ancestral sampler started from N(0, I) at t, against t',
    'predicted_tc': 'data-only t_c from the stability of the central fixed point',
    'memorization': 'memorization -> generalization experiment over training-set sizes',
    'mem_score': 'memorization / generalization / kNN scores of config.analysis.samples_file vs the training set',
    'jacobian_rank': 'Jacobian rank of the denoiser along a sampling trajectory',
}

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections), e.g. configs/ddpm/digits.py. '
                                'Override fields with --config.<section>.<field>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory: checkpoints, samples, TensorBoard logs, results.')
flags.DEFINE_enum('mode', 'train', list(MODE_HELP), 'What to run:\n' +
                  '\n'.join(f'  {k}: {v}' for k, v in MODE_HELP.items()))
flags.DEFINE_string('sample_out', None, '--mode=sample: output .npz path (default: a name under '
                    '<workdir>/samples/ that encodes the settings).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import run_lib  # imported here so that --help stays fast
  from models.utils import CheckpointError
  logging.getLogger().setLevel(logging.INFO)
  handler = run_lib.MODES.get(FLAGS.mode)
  if handler is None:
    sys.exit(f'--mode={FLAGS.mode} is not implemented yet in this version.')
  kwargs = {'sample_out': FLAGS.sample_out} if FLAGS.mode == 'sample' else {}
  try:
    handler(FLAGS.config, FLAGS.workdir, **kwargs)
  except USER_ERRORS + (CheckpointError,) as err:  # bad input: one clear line, no traceback
    sys.exit(f'error: {type(err).__name__}: {err}')


def _check_overrides(argv):
  """Fails early, with the list of known fields, on a misspelt --config.<field> override."""
  from configs.validation import ConfigError, check_override_fields, load_config_file
  paths = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  paths += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '--config']
  if not paths or not any(a.startswith('--config.') for a in argv):
    return
  try:
    check_override_fields(load_config_file(paths[-1]), argv)
  except ConfigError as err:
    sys.exit(f'error: {err}')


if __name__ == '__main__':
  _check_overrides(sys.argv)
  app.run(main)
