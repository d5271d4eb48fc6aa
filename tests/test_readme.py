"""The README's quoted figures stay in step with the committed results files.

* Every FID of a Table-1 table ("| Dataset | n | gls-DDIM | DDIM | ..."; cells "FID (t_c=..., NFE=...)") equals, to
  2 decimals, the row of that data set's committed results_all.csv with the same (method, num_steps, init, t_start),
  with the same NFE; a gls cell's t_c is the best of the sweep's gls cells, as the table's note says.
* Every FID and KID of a cell-by-cell table ("| sampler | n | NFE | vanilla FID | KID | gls t_c=200 FID | ...")
  equals the csv row of that (method, n, init, t_start) to 2 and 4 decimals.
* The README stays a front door of at most 200 lines, and every file it links to (docs pages, figures) exists; so
  does every relative link of the docs pages.

The csv files are read by column name (csv.DictReader), so added columns (precision, in_plan, weights_sha256) and
rows outside the table (other t_c, 100-step reference cells, the auto rule's cells) change nothing.
"""
import csv
import glob
import os
import re

from conftest import ROOT

README = os.path.join(ROOT, 'README.md')
MAX_LINES = 200
# Dataset column of a Table-1 row (and the section a cell-by-cell table sits in) -> the committed results_all.csv
SOURCES = {'DIGITS': 'assets/digits/results_mainjob_all.csv', 'MNIST5K': 'assets/mnist5k/step30000/results_all.csv'}
METHODS = {'DDPM': 'ddpm', 'DDIM': 'ddim', 'PNDM': 'pndm', 'DPM-Solver++': 'dpmpp_2m', 'UniPC': 'unipc'}
VANILLA_T = '999'  # vanilla = N(0, I) at T-1
TABLE1_CELL = re.compile(r'^(\d+\.\d\d) \(t_c=(\d+), NFE=(\d+)\)$')
GLS_FID = re.compile(r'^gls t_c=(\d+) FID$')
KID = re.compile(r'^(\d+\.\d{4}) ± (\d+\.\d{4})$')
LINK = re.compile(r'\]\(([^)\s]+)\)')


def _readme():
  with open(README, encoding='utf-8') as f:
    return f.read()


def _tables(text):
  """[(section heading, [row cells])] for every markdown table; the separator row is dropped."""
  tables, rows, heading = [], [], ''
  for line in text.splitlines() + ['']:
    if line.startswith('|'):
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if not all(re.fullmatch(r':?-+:?', c) for c in cells):
        rows.append(cells)
      continue
    if rows:
      tables.append((heading, rows))
      rows = []
    if line.startswith('## '):
      heading = line[3:]
  return tables


def _results(dataset):
  """{(method, num_steps, init, t_start): row} of the sweep cells on the late_start grid (not the auto rule's)."""
  path = os.path.join(ROOT, SOURCES[dataset])
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f)
            if r.get('tc_rule', '') != 'auto' and r.get('grid', 'late_start') == 'late_start']
  out = {}
  for r in rows:
    key = (r['method'], int(r['num_steps']), r['init'], r['t_start'])
    assert key not in out, f'{SOURCES[dataset]} holds {key} twice'
    out[key] = r
  return out


def _in_plan(row):
  return row.get('in_plan', 'True') != 'False'


def test_the_readme_is_a_front_door_of_at_most_200_lines():
  n = len(_readme().splitlines())
  assert n <= MAX_LINES, f'README.md has {n} lines; move details to docs/ (at most {MAX_LINES})'


def test_every_table1_fid_equals_the_committed_csv():
  checked = {}
  for _, rows in _tables(_readme()):
    header = rows[0]
    if header[:2] != ['Dataset', 'n']:
      continue
    for row in rows[1:]:
      if row[0] not in SOURCES:
        continue  # the floor row
      results, n = _results(row[0]), int(row[1])
      for column, cell in zip(header[2:], row[2:]):
        init = 'gls' if column.startswith('gls-') else 'normal'
        method = METHODS[column[4:] if init == 'gls' else column]
        m = TABLE1_CELL.match(cell)
        assert m, f'{row[0]} n={n} {column}: {cell!r} is not "FID (t_c=..., NFE=...)"'
        fid, t_start, nfe = m.groups()
        key = (method, n, init, t_start)
        assert key in results, f'{row[0]} {column} n={n}: no cell {key} in {SOURCES[row[0]]}'
        r = results[key]
        assert f"{float(r['fid']):.2f}" == fid, f"{row[0]} {column} n={n}: README {fid}, csv {float(r['fid']):.2f}"
        assert r['nfe'] == nfe, f"{row[0]} {column} n={n}: README NFE={nfe}, csv {r['nfe']}"
        if init == 'normal':
          assert t_start == VANILLA_T, f'{row[0]} {column} n={n}: vanilla starts at t_c={VANILLA_T}'
        else:  # the table's rule: the best t_c of the sweep's gls cells
          best = min(float(v['fid']) for k, v in results.items()
                     if k[:3] == (method, n, 'gls') and _in_plan(v))
          assert f'{best:.2f}' == fid, f'{row[0]} {column} n={n}: README {fid} is not the best gls cell ({best:.2f})'
        checked[row[0]] = checked.get(row[0], 0) + 1
  assert checked.get('DIGITS', 0) >= 16, f'the digits Table-1 table was not found in the README ({checked})'
  if 'MNIST5K' in checked:
    assert checked['MNIST5K'] >= 30, checked


def test_every_cell_by_cell_fid_and_kid_equals_the_committed_csv():
  checked = 0
  for heading, rows in _tables(_readme()):
    header = rows[0]
    if header[:4] != ['sampler', 'n', 'NFE', 'vanilla FID']:
      continue
    dataset = 'MNIST5K' if 'mnist' in heading.lower() else 'DIGITS'
    results = _results(dataset)
    columns = {}  # column index of an FID -> (init, t_start); its KID is the next column
    for j, column in enumerate(header):
      if column == 'vanilla FID':
        columns[j] = ('normal', VANILLA_T)
      elif GLS_FID.match(column):
        columns[j] = ('gls', GLS_FID.match(column).group(1))
    assert len(columns) >= 2, header
    for row in rows[1:]:
      method, n, nfe = METHODS[row[0]], int(row[1]), row[2]
      for j, (init, t_start) in columns.items():
        key = (method, n, init, t_start)
        assert key in results, f'no cell {key} in {SOURCES[dataset]}'
        r = results[key]
        where = f'{row[0]} n={n} {header[j]}'
        assert f"{float(r['fid']):.2f}" == row[j], f"{where}: README {row[j]}, csv {float(r['fid']):.2f}"
        assert r['nfe'] == nfe, f"{where}: README NFE={nfe}, csv {r['nfe']}"
        if header[j + 1] == 'KID':
          m = KID.match(row[j + 1])
          assert m, f'{where}: KID {row[j + 1]!r} is not "k ± se"'
          assert (f"{float(r['kid']):.4f}", f"{float(r['kid_std']):.4f}") == m.groups(), \
              f"{where}: README KID {row[j + 1]}, csv {float(r['kid']):.4f} ± {float(r['kid_std']):.4f}"
        checked += 1
  assert checked >= 24, f'the digits cell-by-cell table was not found in the README ({checked} FIDs checked)'


def _relative_links(path):
  with open(path, encoding='utf-8') as f:
    text = f.read()
  text = re.sub(r'```.*?```', '', text, flags=re.S)  # code blocks hold no links
  return [t.split('#')[0] for t in LINK.findall(text)
          if not re.match(r'^[a-z]+:', t) and not t.startswith('#')]


def test_every_file_the_readme_links_to_exists():
  links = _relative_links(README)
  assert any(t.startswith('docs/') and t.endswith('.md') for t in links)
  missing = [t for t in links if not os.path.exists(os.path.join(ROOT, t))]
  assert missing == [], f'README.md links to missing files: {missing}'


def test_every_relative_link_of_the_docs_pages_exists():
  missing = [f'{os.path.relpath(page, ROOT)} -> {t}' for page in sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
             for t in _relative_links(page) if not os.path.exists(os.path.join(os.path.dirname(page), t))]
  assert missing == [], f'docs pages link to missing files: {missing}'
