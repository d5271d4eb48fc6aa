"""Executes notebooks/1d_example.ipynb headless (nbclient, cwd = notebooks/) and checks its figures."""
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', '1d_example.ipynb')
FIGURES = ['potential_three_times.png', 'curvature.png', 'bifurcation.png', 'trajectories.png',
           'potential_strip.png', 'stability_curve.png']


def test_1d_notebook_runs_and_saves_figures(monkeypatch):
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  start = time.time()
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError on any failing cell
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
  text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
  assert 'critical index 707' in text and 'theta = 0.6429' in text
  for name in FIGURES:
    path = os.path.join(ROOT, 'assets', '1d', name)
    assert os.path.isfile(path) and os.path.getsize(path) > 1000, f'missing figure {path}'
    assert os.path.getmtime(path) >= start - 1, f'{path} was not rewritten by this run'
