"""Where the config is read: per module, the functions that take a ``config`` (or ``sampling``: a config block)
argument and the ``config.x`` reads they make, with the module's layer (tests/test_architecture.py).

  python benchmarks/config_reads.py [--root DIR] [--smoke]

The config should be read at the edge (the modes, the sweep, the experiments, and the adapters that turn it into
data, models and paths) and handed down as values: the planning layer (sampling.py) and the samplers should read
none of it. Counts are static (ast): a read is an attribute access on a name called ``config``, ``sampling`` (when
it is a parameter) or ``s``/``e``/``d`` bound to ``config.sampling`` / ``config.eval`` / ``config.data``.
"""
import argparse
import ast
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests'))
from test_architecture import _rank  # noqa: E402  (the one table of layers)

CONFIG_NAMES = ('config', 'cfg')


def _reads(fn):
  """(config reads, takes config) of one function node: attribute chains on config names and their aliases."""
  params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
  names = set(CONFIG_NAMES) & params | ({'sampling'} & params)
  for node in ast.walk(fn):  # aliases: s = config.sampling, e = config.eval, ...
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name) and node.value.value.id in names):
      names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
  count = sum(1 for node in ast.walk(fn) if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in names)
  return count, bool(names & (set(CONFIG_NAMES) | {'sampling'}))


def survey(root):
  """{module: (layer, functions taking config, config reads)} over the code base (no tests, benchmarks)."""
  out = {}
  for path in glob.glob(os.path.join(root, '**', '*.py'), recursive=True):
    rel = os.path.relpath(path, root)
    if rel.startswith(('tests', 'benchmarks', 'notebooks', 'docs', 'configs')):
      continue
    module = rel[:-3].replace(os.sep, '.').removesuffix('.__init__')
    fns = [n for n in ast.walk(ast.parse(open(path).read())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    takes = reads = 0
    for fn in fns:
      count, takes_config = _reads(fn)
      takes += takes_config
      reads += count if takes_config else 0
    if takes:
      out[module] = (_rank(module), takes, reads)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--root', default=os.path.join(HERE, '..'), help='the tree to survey (default: this one)')
  parser.add_argument('--smoke', action='store_true', help='the same survey (it takes a second; for the tests)')
  args = parser.parse_args()
  rows = sorted(survey(args.root).items(), key=lambda kv: (-(kv[1][0] or 0), kv[0]))
  print('| module | layer | functions taking config | config reads |\n|---|---:|---:|---:|')
  for module, (layer, takes, reads) in rows:
    print(f'| {module} | {layer} | {takes} | {reads} |')
  low = [f'{m} ({reads})' for m, (layer, _, reads) in rows if layer is not None and layer <= 3]
  print(f'\nmodules: {len(rows)}, functions: {sum(r[1] for _, r in rows)}, reads: {sum(r[2] for _, r in rows)}')
  print('modules of layers <= 3 (planning, data, models, samplers, schedule) that read it:', ', '.join(low))


if __name__ == '__main__':
  main()
