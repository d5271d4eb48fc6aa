"""The schedules study's answer: does the late start still help once the sampler has a good time grid?

  python -m experiments.schedules --csv workdirs/digits_schedules/eval/results_all.csv [--out answer.md]

Reads an eval results_all.csv swept over several grids (eval.grids) and writes, per (sampler, n): the best vanilla
cell over all grids against the best gls cell over all grids and t_c (by FID, as the paper's Table 1), the KID gap
in combined standard errors (positive = the late start scores better) and which grid won each; then, per grid, the
vanilla FID and the best gls FID, so that each grid's own gain can be read too.
"""
import argparse
import csv

import io_util
import samplers
from experiments import tables


def read(path):
  """Rows of a results_all.csv with numbers parsed (the auto rule's cells are left out)."""
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if r.get('tc_rule', '') != 'auto']
  for r in rows:
    r.update(num_steps=int(r['num_steps']), nfe=int(r['nfe']), fid=float(r['fid']), kid=float(r['kid']),
             kid_std=float(r['kid_std']))
  return rows


def answer_rows(rows):
  """[(method, n, best vanilla, best gls, gap, {grid: (vanilla fid, best gls fid)})] in registry order."""
  out = []
  keys = sorted({(r['method'], r['num_steps']) for r in rows},
                key=lambda k: (list(samplers.SAMPLERS).index(k[0]) if k[0] in samplers.SAMPLERS else 99, k[1]))
  for method, n in keys:
    mine = [r for r in rows if (r['method'], r['num_steps']) == (method, n)]
    vanilla = [r for r in mine if r['init'] == 'normal']
    gls = [r for r in mine if r['init'] == 'gls']
    if not vanilla or not gls:
      continue
    v, g = min(vanilla, key=lambda r: r['fid']), min(gls, key=lambda r: r['fid'])
    per_grid = {}
    for grid in dict.fromkeys(r['grid'] for r in mine):
      gv = [r['fid'] for r in vanilla if r['grid'] == grid]
      gg = [r['fid'] for r in gls if r['grid'] == grid]
      per_grid[grid] = (gv[0] if gv else float('nan'), min(gg) if gg else float('nan'))
    out.append((method, n, v, g, tables.kid_gap(v, g), per_grid))
  return out


def markdown(rows):
  answers = answer_rows(rows)
  grids = list(dict.fromkeys(grid for *_, per_grid in answers for grid in per_grid))
  header = ['sampler', 'n', 'best vanilla: grid, FID, KID', 'best gls: grid, t_c, FID, KID', 'KID gap (SE)',
            *[f'{grid}: vanilla / gls FID' for grid in grids]]
  table = []
  for method, n, v, g, z, per_grid in answers:
    name = samplers.SAMPLERS[method].display if method in samplers.SAMPLERS else method
    table.append([name, n, f"{v['grid']}, {v['fid']:.2f}, {v['kid']:.4f} +- {v['kid_std']:.4f}",
                  f"{g['grid']}, {g['t_start']}, {g['fid']:.2f}, {g['kid']:.4f} +- {g['kid_std']:.4f}", f'{z:.1f}',
                  *[f'{per_grid[grid][0]:.2f} / {per_grid[grid][1]:.2f}' if grid in per_grid else '-'
                    for grid in grids]])
  t_cs = sorted({int(r['t_start']) for r in rows if r['init'] == 'gls'})
  counts = sorted({int(r['num_samples']) for r in rows})
  precisions = sorted({r.get('precision', 'unrecorded') for r in rows})
  helped = sum(z > 2 for *_, z, _ in answers)
  return (io_util.markdown_table(header, table) +
          f'\nBest over grids {grids} (vanilla) and over grids and t_c in {t_cs} (gls), by FID; {counts} samples per '
          f'cell; U-Net precision {", ".join(precisions)}. KID gap = (vanilla KID - gls KID) / combined standard '
          f'error, positive = the late start scores better. The late start is resolvedly better (gap > 2) in '
          f'{helped} of {len(answers)} (sampler, n).\n')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--csv', action='append', required=True, help='results_all.csv (repeatable)')
  parser.add_argument('--out', default='', help='write the markdown here too')
  args = parser.parse_args(argv)
  rows = [r for path in args.csv for r in read(path)]
  text = markdown(rows)
  if args.out:
    io_util.write_text(args.out, text)
  print(text)


if __name__ == '__main__':
  main()
