"""Figures of the experiments (headless, written atomically through io_util): Jacobian rank curves and class
compositions with their intervals."""
import numpy as np

import io_util


def plot_rank_curves(curves, png_path, title='Jacobian rank of the denoiser'):
  """curves: {label: rows from rank_curve}; writes rank/D against noise level (log-x) to png_path."""
  plt = io_util.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for label, rows in curves.items():
    rows = sorted(rows, key=lambda r: r['noise_level'])
    ax.plot([r['noise_level'] for r in rows], [r['rank_over_D'] for r in rows], marker='o', ms=3, label=label)
  ax.set_xscale('log')
  ax.set_xlabel(r'noise level $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$')
  ax.set_ylabel('rank / D (99% Frobenius energy)')
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.legend()
  return io_util.save_figure(fig, png_path)


def plot_compositions(stats_by_arm, path, class_names=None, title='class composition'):
  """Grouped bar chart of class fractions, one colour per arm, with Wilson error bars.

  stats_by_arm: {arm name: composition_stats(...) dict} (insertion order = bar order). The first dict with a
  'reference_fractions' list is drawn as a black step line. Writes the figure to path; returns path.
  """
  plt = io_util.pyplot()
  arms = list(stats_by_arm.items())
  if not arms:
    raise ValueError('stats_by_arm is empty')
  k = len(arms[0][1]['fractions'])
  if any(len(s['fractions']) != k for _, s in arms):
    raise ValueError('every arm needs the same number of classes')
  names = [str(c) for c in (class_names if class_names is not None else range(k))]
  if len(names) != k:
    raise ValueError(f'{len(names)} class_names for {k} classes')
  x, width = np.arange(k), 0.8 / len(arms)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * k * max(1, len(arms) / 2)), 3.8))
  for i, (arm, s) in enumerate(arms):
    f = np.asarray(s['fractions'])
    yerr = np.clip([f - np.asarray(s['ci_low']), np.asarray(s['ci_high']) - f], 0, None)
    label = f"{arm} (N={s['n']}, H={s['entropy']:.3f})"
    ax.bar(x + (i - (len(arms) - 1) / 2) * width, f, width, yerr=yerr, capsize=2, label=label)
  ref = next((s['reference_fractions'] for _, s in arms if s.get('reference_fractions') is not None), None)
  if ref is not None:
    ax.stairs(np.asarray(ref, dtype=np.float64), np.arange(k + 1) - 0.5, baseline=None, color='k', lw=1.2,
              label='reference')
  level = arms[0][1].get('level', 0.95)
  ax.set(xticks=x, xticklabels=names, xlabel='predicted class', ylabel=f'fraction ({level:.0%} Wilson CI)',
         title=title, xlim=(-0.6, k - 0.4))
  ax.legend(fontsize=7)
  return io_util.save_figure(fig, path)
