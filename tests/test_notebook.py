"""Executes notebooks/1d_example.ipynb headless (nbclient, cwd = notebooks/) and checks its figures.

The figures go to a temporary folder through $SSB_FIGURES_DIR, so the tracked PNGs under assets/1d stay as
they are.
"""
import os

import nbformat
from nbclient import NotebookClient

from conftest import HANG_GUARD_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', '1d_example.ipynb')
FIGURES = ['potential_three_times.png', 'curvature.png', 'bifurcation.png', 'trajectories.png',
           'potential_strip.png', 'stability_curve.png']


def test_1d_notebook_runs_and_saves_figures(monkeypatch, tmp_path):
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  figures_dir = tmp_path / 'figures'
  monkeypatch.setenv('SSB_FIGURES_DIR', str(figures_dir))  # the kernel inherits this environment
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=HANG_GUARD_S, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError on any failing cell
  text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
  assert 'critical index 707' in text and 'theta = 0.6429' in text
  assert sorted(os.listdir(figures_dir)) == sorted(FIGURES)
  for name in FIGURES:
    path = figures_dir / name
    assert path.stat().st_size > 1000, f'figure {path} is nearly empty'
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', f'{path} is not a PNG'
