"""Tests for analysis/diversity.py: Wilson intervals, entropy / KL with bootstrap intervals, chi-square and
Stuart-Maxwell tests, and the composition plot."""
import json

import numpy as np
import pytest
from scipy import stats

from analysis import diversity as D

SKEWED = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.03, 0.01, 0.01])


def test_wilson_interval_closed_form():
  # 5/10 at 95%: centre 0.5, half-width z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2)) = 0.263405
  low, high = D.wilson_interval([5, 0, 10], 10, level=0.95)
  np.testing.assert_allclose(low, [0.236593, 0.0, 0.722467], atol=1e-6)
  # 0/10: upper bound z^2/n / (1 + z^2/n) = 0.277533; 10/10 mirrors it
  np.testing.assert_allclose(high, [0.763407, 0.277533, 1.0], atol=1e-6)
  narrow = D.wilson_interval(5, 10, level=0.5)
  assert low[0] < narrow[0] < 0.5 < narrow[1] < high[0]


def test_wilson_interval_coverage_on_multinomials():
  rng = np.random.default_rng(0)
  counts = rng.multinomial(2000, SKEWED, size=2000)
  low, high = D.wilson_interval(counts, 2000, level=0.95)
  coverage = ((low <= SKEWED) & (SKEWED <= high)).mean(0)
  assert np.all((coverage >= 0.93) & (coverage <= 0.97)), coverage


def test_composition_stats_uniform_counts():
  s = D.composition_stats([200] * 10, reference_fractions=[0.1] * 10)
  assert s['n'] == 2000 and s['counts'] == [200] * 10
  np.testing.assert_allclose(s['fractions'], 0.1)
  assert s['entropy'] == pytest.approx(np.log(10), abs=1e-12)
  assert s['normalised_entropy'] == pytest.approx(1.0, abs=1e-12)
  assert s['entropy_mm'] == pytest.approx(np.log(10) + 9 / 4000)
  assert s['kl_to_reference'] == pytest.approx(0.0, abs=1e-15)
  assert s['gof_g'] == pytest.approx(0.0, abs=1e-12) and s['gof_p_value'] == pytest.approx(1.0)
  assert s['kl_null_mean'] == pytest.approx(9 / 4000)
  # at the maximum the bootstrap replicates all lie at or below log K (the documented edge case)
  assert s['entropy_ci'][1] <= np.log(10) + 1e-12 and s['kl_ci'][0] >= 0


def test_composition_stats_values_and_json():
  counts = np.random.default_rng(1).multinomial(2000, SKEWED)
  ref = np.full(10, 0.1)
  s = D.composition_stats(counts, ref, level=0.9, num_bootstrap=500, seed=3)
  json.dumps(s, allow_nan=False)  # plain Python values only
  p = counts / 2000
  assert s['entropy'] == pytest.approx(stats.entropy(p))
  assert s['kl_to_reference'] == pytest.approx(stats.entropy(p, ref))
  assert s['gof_g'] == pytest.approx(stats.power_divergence(counts, 200 * np.ones(10), lambda_='log-likelihood')[0])
  assert s['gof_p_value'] < 1e-10  # skewed vs uniform at N = 2000
  low, high = np.array(s['ci_low']), np.array(s['ci_high'])
  assert np.all(low <= p) and np.all(p <= high) and np.all(low >= 0) and np.all(high <= 1)
  np.testing.assert_allclose([low, high], D.wilson_interval(counts, 2000, 0.9))
  assert s == D.composition_stats(counts, ref, level=0.9, num_bootstrap=500, seed=3)  # deterministic
  assert s['entropy_ci'] != D.composition_stats(counts, ref, level=0.9, num_bootstrap=500, seed=4)['entropy_ci']


def test_bootstrap_intervals_contain_estimates_and_match_delta_method():
  counts = np.random.default_rng(2).multinomial(2000, SKEWED)
  s = D.composition_stats(counts, SKEWED, num_bootstrap=2000, seed=0)
  reference_far = np.full(10, 0.1)
  far = D.composition_stats(counts, reference_far, seed=0)
  assert s['entropy_ci'][0] < s['entropy'] < s['entropy_ci'][1]
  assert far['kl_ci'][0] < far['kl_to_reference'] < far['kl_ci'][1]
  # delta method: Var(H_hat) ~ (sum p log^2 p - H^2) / N; the 95% width is ~ 2 * 1.96 * sd
  p = np.array(s['fractions'])
  sd = np.sqrt(((p * np.log(p) ** 2).sum() - s['entropy'] ** 2) / 2000)
  assert s['entropy_ci'][1] - s['entropy_ci'][0] == pytest.approx(2 * 1.96 * sd, rel=0.15)


def test_kl_divergence_edge_cases():
  assert D.kl_divergence([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
  assert D.kl_divergence([0.5, 0.25, 0.25], [0.5, 0.5, 0.0]) == np.inf
  s = D.composition_stats([10, 5, 0], [0.5, 0.5, 0.0])
  assert s['gof_dof'] == 1 and s['kl_to_reference'] == pytest.approx(stats.entropy([2 / 3, 1 / 3], [0.5, 0.5]))
  bad = D.composition_stats([10, 5, 1], [0.5, 0.5, 0.0])
  assert bad['kl_to_reference'] == np.inf and bad['gof_p_value'] == 0.0
  assert bad['kl_ci'][0] < bad['kl_ci'][1] == np.inf  # some resamples miss the third class, some do not


def test_compare_compositions_same_and_different():
  rng = np.random.default_rng(0)
  same = D.compare_compositions(rng.multinomial(2000, SKEWED), rng.multinomial(2000, SKEWED))
  assert same['p_value'] > 0.05 and same['dof'] == 9
  assert same['entropy_diff_ci'][0] < 0 < same['entropy_diff_ci'][1]
  a, b = rng.multinomial(2000, SKEWED), rng.multinomial(2000, np.full(10, 0.1))
  diff = D.compare_compositions(a, b)
  assert diff['p_value'] < 1e-6 and diff['cramers_v'] > 0.2
  assert diff['entropy_diff'] > 0 and diff['entropy_diff_ci'][0] > 0  # uniform b is more diverse
  assert diff['entropy_diff_ci'][0] < diff['entropy_diff'] < diff['entropy_diff_ci'][1]
  assert diff['entropy_diff'] == pytest.approx(stats.entropy(b) - stats.entropy(a))


def test_compare_compositions_hand_table_matches_scipy():
  a, b = [10, 20, 30, 0], [15, 15, 20, 0]  # the empty last class is dropped
  out = D.compare_compositions(a, b)
  table = np.array([[10, 20, 30], [15, 15, 20]], dtype=float)
  expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
  chi2 = ((table - expected) ** 2 / expected).sum()
  ref = stats.chi2_contingency(table, correction=False)
  assert out['chi2'] == pytest.approx(chi2) and out['chi2'] == pytest.approx(ref[0])
  assert out['p_value'] == pytest.approx(ref[1]) and out['p_value'] == pytest.approx(stats.chi2.sf(chi2, 2))
  assert out['dof'] == 2 and out['min_expected'] == pytest.approx(expected.min())
  assert out['cramers_v'] == pytest.approx(np.sqrt(chi2 / 110))
  assert isinstance(out['chi2'], float) and isinstance(out['dof'], int)
  one = D.compare_compositions([5, 0], [7, 0])  # every sample in one class: nothing to test
  assert (one['chi2'], one['dof'], one['p_value']) == (0.0, 0, 1.0)


def test_stuart_maxwell_reduces_to_mcnemar_and_is_label_invariant():
  # K = 2: b = 12 pairs (0 -> 1), c = 4 pairs (1 -> 0): McNemar (b - c)^2 / (b + c) = 4
  la = np.array([0] * 30 + [0] * 12 + [1] * 4 + [1] * 20)
  lb = np.array([0] * 30 + [1] * 12 + [0] * 4 + [1] * 20)
  out = D.stuart_maxwell_test(la, lb, 2)
  assert out['statistic'] == pytest.approx(4.0) and out['dof'] == 1
  assert out['p_value'] == pytest.approx(stats.chi2.sf(4.0, 1))
  rng = np.random.default_rng(0)
  la = rng.integers(0, 4, 500)
  lb = np.where(rng.random(500) < 0.7, la, rng.integers(0, 4, 500))
  base = D.stuart_maxwell_test(la, lb, 5)  # class 4 never appears
  perm = np.array([3, 0, 4, 1, 2])
  relabelled = D.stuart_maxwell_test(perm[la], perm[lb], 5)
  assert base['dof'] == 3 and relabelled['dof'] == 3
  assert relabelled['statistic'] == pytest.approx(base['statistic'])
  assert D.stuart_maxwell_test(lb, la, 5)['statistic'] == pytest.approx(base['statistic'])
  assert D.stuart_maxwell_test(la, la, 5) == dict(statistic=0.0, dof=0, p_value=1.0, n=500)


def test_input_validation():
  with pytest.raises(ValueError, match='non-negative'):
    D.composition_stats([3, -1, 2])
  with pytest.raises(ValueError, match='no samples'):
    D.composition_stats([0, 0, 0])
  with pytest.raises(ValueError, match=r'\(K,\)'):
    D.composition_stats([[1, 2], [3, 4]])
  with pytest.raises(ValueError, match='sum to 1'):
    D.composition_stats([1, 2, 3], [0.2, 0.2, 0.2])
  with pytest.raises(ValueError, match='same classes'):
    D.compare_compositions([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match='labels must lie'):
    D.stuart_maxwell_test([0, 3], [0, 1], 3)


def test_plot_compositions_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  arms = {'vanilla': D.composition_stats(rng.multinomial(500, SKEWED), num_bootstrap=50),
          'gls': D.composition_stats(rng.multinomial(500, np.full(10, 0.1)), num_bootstrap=50)}
  arms['gls']['reference_fractions'] = [0.1] * 10
  from experiments import plots
  path = plots.plot_compositions(arms, str(tmp_path / 'comp.png'), class_names=[f'd{i}' for i in range(10)],
                             title='test')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='class_names'):
    plots.plot_compositions(arms, str(tmp_path / 'bad.png'), class_names=['a'])
