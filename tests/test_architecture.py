"""The layering of the code base: no import cycles, and no module imports from a layer above its own
(imports inside functions count too). README "Architecture" shows the same layers."""
import ast
import glob
import os

from conftest import ROOT

# Rank of each module (top-level name or package prefix); a module may import only ranks <= its own.
LAYERS = [
    ('main', 7),
    ('eval_lib', 6), ('experiments', 6),
    ('run_lib', 5), ('sample_lib', 5),
    ('late_start', 4),
    ('analysis', 3), ('configs.validation', 3), ('sampling', 3),
    ('datasets', 2), ('evaluation', 2), ('fid_backend', 2),
    ('data_files', 1), ('inception_weights', 1), ('workdir', 1), ('dist_util', 1), ('configs', 1), ('models', 1),
    ('samplers', 1), ('losses', 1),
    ('errors', 0), ('io_util', 0), ('rng', 0), ('moments', 0), ('sde_lib', 0),
]


def _rank(module):
  for prefix, rank in LAYERS:
    if module == prefix or module.startswith(prefix + '.'):
      return rank
  return None


def _modules():
  paths = [p for p in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True)
           if not os.path.relpath(p, ROOT).startswith(('tests', 'benchmarks', 'notebooks', 'docs'))]
  out = {}
  for path in paths:
    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
  return out


def _imports(path, modules):
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ':' in node.value:
      names = [node.value.split(':')[0]]  # 'module:function', as main.MODES names what it imports by string
    found.update(n for n in names if n in modules)
  return found


def test_every_module_has_a_layer():
  assert [m for m in _modules() if _rank(m) is None] == []


def test_no_module_imports_a_higher_layer():
  modules = _modules()
  bad = [f'{m} (layer {_rank(m)}) imports {i} (layer {_rank(i)})' for m, path in modules.items()
         for i in _imports(path, modules) if _rank(i) > _rank(m)]
  assert bad == []


def test_no_import_cycles():
  modules = _modules()
  graph = {m: {i for i in _imports(p, modules) if i != m and not m.startswith(i + '.')} for m, p in modules.items()}
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = 'open'
    for n in graph[m]:
      if state.get(n) == 'open':
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n, stack + [n])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert cycles == []


def test_the_mode_table_is_seen_as_imports():
  """main.py picks each mode's function from a 'module:function' string: those arrows are part of the graph."""
  import main
  modules = _modules()
  targets = {target.split(':')[0] for _, target, _ in main.MODES.values()}
  assert targets <= _imports(os.path.join(ROOT, 'main.py'), modules)
  assert {'run_lib', 'sample_lib', 'eval_lib', 'experiments.ssb', 'experiments.gen'} <= targets


def test_the_planning_layer_reads_no_config():
  """sampling.py plans from RunSpecs: none of its functions takes a config besides the spec's constructor, which
  reads config.sampling at the edge (benchmarks/config_reads.py surveys the rest)."""
  tree = ast.parse(open(os.path.join(ROOT, 'sampling.py')).read())
  takes = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
           and {a.arg for a in n.args.args} & {'config', 'sampling'}]
  assert takes == ['from_config']
