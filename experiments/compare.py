"""Two runs of the same cells, side by side: the reproduction subset against the published table, or the same
cells sampled in float32 and in bf16.

  python -m experiments.compare --a assets/mnist5k/reproduce/results_all.csv --a_name 'fp32 (shipped model)' \\
      --b assets/mnist5k/step30000/results_all.csv --b_name 'published (bf16)' [--out comparison.md]

Matches the cells of ``a`` and ``b`` by (method, n, init, t_c, grid) and writes, per cell present in both: each FID
and KID +- standard error, the FID difference, and the KID gap (KID a - KID b) / root sum of squares of the two
standard errors (experiments.tables.kid_gap). The two runs share the per-sample seeds, so their errors are
correlated and this gap is conservative: |gap| <= 2 is "the same within noise". Cells of ``a`` missing from ``b``
are listed.
"""
import argparse

import io_util
import samplers
from experiments import schedules, tables

KEY = ('method', 'num_steps', 'init', 't_start', 'grid')


def pairs(a_rows, b_rows):
  """[(a, b)] of the cells present in both, in registry order, and the keys of ``a`` missing from ``b``."""
  a = {tuple(str(r[k]) for k in KEY): r for r in a_rows}
  b = {tuple(str(r[k]) for k in KEY): r for r in b_rows}
  order = {m: i for i, m in enumerate(samplers.SAMPLERS)}
  both = sorted(set(a) & set(b), key=lambda k: (int(k[1]), order.get(k[0], 99), k[2] != 'normal', int(k[3]), k[4]))
  return [(a[k], b[k]) for k in both], sorted(set(a) - set(b))


def markdown(a_rows, b_rows, a_name, b_name):
  matched, alone = pairs(a_rows, b_rows)
  header = ['sampler', 'n', 't_c', f'FID {a_name}', f'FID {b_name}', 'FID difference', f'KID {a_name}',
            f'KID {b_name}', 'KID gap (SE)']
  rows = []
  for a, b in matched:
    name = ('gls-' if a['init'] == 'gls' else '') + samplers.display_name(a['method'])
    rows.append([name, a['num_steps'], a['t_start'] if a['init'] == 'gls' else '-', f"{a['fid']:.2f}",
                 f"{b['fid']:.2f}", f"{a['fid'] - b['fid']:+.2f}", f"{a['kid']:.4f} +- {a['kid_std']:.4f}",
                 f"{b['kid']:.4f} +- {b['kid_std']:.4f}", f'{tables.kid_gap(a, b):+.1f}'])
  gaps = [abs(tables.kid_gap(a, b)) for a, b in matched]
  within = sum(g <= 2 for g in gaps)
  text = io_util.markdown_table(header, rows)
  text += (f'\n{len(matched)} cells in both; |KID gap| <= 2 in {within} of them, largest |gap| '
           f'{max(gaps, default=float("nan")):.1f}; largest |FID difference| '
           f'{max((abs(a["fid"] - b["fid"]) for a, b in matched), default=float("nan")):.2f}. '
           'Precision: ' + ', '.join(f'{n} {sorted({r.get("precision", "unrecorded") for r in rs})}'
                                     for n, rs in ((a_name, a_rows), (b_name, b_rows))) + '.\n')
  if alone:
    text += f'Cells of {a_name} not in {b_name}: {", ".join("_".join(k) for k in alone)}.\n'
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--a', required=True, help='results_all.csv of the first run')
  parser.add_argument('--b', required=True, help='results_all.csv of the second run')
  parser.add_argument('--a_name', default='a', help='its name in the table')
  parser.add_argument('--b_name', default='b', help='its name in the table')
  parser.add_argument('--out', default='', help='write the markdown here too')
  args = parser.parse_args(argv)
  text = markdown(schedules.read(args.a), schedules.read(args.b), args.a_name, args.b_name)
  if args.out:
    io_util.write_text(args.out, text)
  print(text)


if __name__ == '__main__':
  main()
