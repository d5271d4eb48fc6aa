"""Statistics of class compositions: is one arm's sample diversity different from another's, or from the
training split's? Pure numpy/scipy; the counts come from analysis/classifier.py (predicted class per sample).

Estimators (K classes, N samples of one arm, counts n_k, fractions p_k = n_k / N):

* per-class fraction intervals: the Wilson score interval (Wilson, "Probable inference, the law of succession,
  and statistical inference", JASA 1927), which keeps near-nominal coverage for small p_k, unlike the Wald
  interval p_k +- z sqrt(p_k (1 - p_k) / N); each interval is marginal (no correction for K intervals).
* entropy: the plug-in H = -sum_k p_k log p_k (nats). It is biased low: E[H] ~ H - (K - 1) / (2N) (Miller,
  "Note on the bias of information estimates", 1955); the Miller-Madow estimate adds (m - 1) / (2N), m = the
  number of classes observed.
* KL(p_hat || reference) in nats; the plug-in is biased high: if the arm's true distribution equals the
  reference, 2 N KL is the G statistic, approximately chi-square with K - 1 degrees of freedom, so the plug-in
  KL is about (K - 1) / (2N) on average even then ('kl_null_mean'). 'gof_p_value' is that G test.
* intervals for entropy and KL: percentile bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap",
  ch. 13): resample N draws from Multinomial(N, p_hat). Near the edge of the parameter range (p_hat close to
  uniform for the entropy, close to the reference for the KL) the bootstrap distribution lies entirely on one
  side of the estimate, so the interval may not contain it; read the G test there instead.
* two arms: the chi-square test of homogeneity on the 2 x K table. It assumes the arms are independent. Arms
  drawn from the same per-sample seeds are paired; if their labels are positively correlated the test is
  conservative (too large p-values), and stuart_maxwell_test on the per-sample labels is the matched test.
"""
import numpy as np
from scipy import stats


def _as_counts(counts, name='counts'):
  """(K,) int64 array of non-negative integer counts with a positive total; K >= 2."""
  arr = np.asarray(counts)
  if arr.ndim != 1 or arr.shape[0] < 2:
    raise ValueError(f'{name} must be a (K,) array with K >= 2, got shape {arr.shape}')
  if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr)):
    raise ValueError(f'{name} must be non-negative integers, got {arr.tolist()}')
  arr = arr.astype(np.int64)
  if arr.sum() == 0:
    raise ValueError(f'{name} has no samples (all counts are 0)')
  return arr


def wilson_interval(k, n, level=0.95):
  """Wilson score interval for a binomial proportion k / n; k array-like, n > 0. Returns (low, high) arrays
  in [0, 1], same shape as k."""
  k, n = np.asarray(k, dtype=np.float64), float(n)
  if n <= 0:
    raise ValueError(f'n must be > 0, got {n}')
  z = stats.norm.ppf(0.5 + level / 2)
  p, z2n = k / n, z * z / n
  centre = (p + z2n / 2) / (1 + z2n)
  half = z / (1 + z2n) * np.sqrt(p * (1 - p) / n + z2n / (4 * n))
  return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def entropy(fractions):
  """Shannon entropy in nats over the last axis of fractions (..., K), with 0 log 0 = 0."""
  p = np.asarray(fractions, dtype=np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def kl_divergence(p, q):
  """KL(p || q) in nats over the last axis; p (..., K), q (K,). inf where p_k > 0 and q_k = 0."""
  p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
  support = p > 0
  ratio = np.where(support, p / np.where(q > 0, q, 1.0), 1.0)
  kl = np.sum(np.where(support, p * np.log(ratio), 0.0), axis=-1)
  return np.where(np.any(support & (q <= 0), axis=-1), np.inf, kl)


def _percentile_ci(values, level):
  # inverted_cdf (no interpolation) when some replicates are inf (a KL with a class the reference lacks)
  method = 'linear' if np.all(np.isfinite(values)) else 'inverted_cdf'
  return [float(v) for v in np.quantile(values, [(1 - level) / 2, (1 + level) / 2], method=method)]


def _bootstrap_fractions(counts, num_bootstrap, rng):
  """(num_bootstrap, K) fractions of N draws from Multinomial(N, counts / N)."""
  n = int(counts.sum())
  return rng.multinomial(n, counts / n, size=num_bootstrap) / n


def _reference(reference_fractions, k):
  ref = np.asarray(reference_fractions, dtype=np.float64)
  if ref.shape != (k,) or np.any(ref < 0) or abs(ref.sum() - 1) > 1e-6:
    raise ValueError(f'reference_fractions must be ({k},) non-negative and sum to 1, got {ref.tolist()}')
  return ref / ref.sum()


def composition_stats(counts, reference_fractions=None, level=0.95, num_bootstrap=2000, seed=0):
  """Fractions, intervals, entropy and KL to a reference of one arm's class counts (K,) (see module doc).

  Returns a JSON-friendly dict: n, counts, fractions, ci_low, ci_high (Wilson, per class, at ``level``),
  entropy (plug-in, nats, in [0, log K]), entropy_mm (Miller-Madow), entropy_ci ([lo, hi], percentile
  bootstrap with np.random.default_rng(seed)), normalised_entropy (entropy / log K, in [0, 1]); with
  reference_fractions (K,): kl_to_reference (nats, >= 0; inf if a class with reference 0 is observed), kl_ci
  (same resamples), kl_null_mean ((K' - 1) / (2N), K' = classes with reference > 0: the expected plug-in KL
  if the arm matched the reference exactly), gof_g (= 2 N KL), gof_dof, gof_p_value (G test of
  "the arm's class distribution is the reference").
  """
  counts = _as_counts(counts)
  k, n = counts.shape[0], int(counts.sum())
  p = counts / n
  low, high = wilson_interval(counts, n, level)
  h = float(entropy(p))
  boot = _bootstrap_fractions(counts, num_bootstrap, np.random.default_rng(seed))
  out = dict(n=n, counts=counts.tolist(), fractions=p.tolist(), ci_low=low.tolist(), ci_high=high.tolist(),
             level=level, entropy=h, entropy_mm=h + (np.count_nonzero(counts) - 1) / (2 * n),
             entropy_ci=_percentile_ci(entropy(boot), level), normalised_entropy=h / float(np.log(k)),
             num_bootstrap=num_bootstrap)
  if reference_fractions is not None:
    ref = _reference(reference_fractions, k)
    kl = float(kl_divergence(p, ref))
    dof = int(np.count_nonzero(ref)) - 1
    g = 2 * n * kl
    out.update(kl_to_reference=kl, kl_ci=_percentile_ci(kl_divergence(boot, ref), level),
               kl_null_mean=dof / (2 * n), gof_g=g, gof_dof=dof,
               gof_p_value=float(stats.chi2.sf(g, dof)) if dof > 0 else 1.0)
  return out


def compare_compositions(counts_a, counts_b, level=0.95, num_bootstrap=2000, seed=0):
  """Chi-square test of homogeneity of two arms' class counts (K,) each, and their entropy difference.

  Classes with zero total count are dropped first (they carry no information and would give zero expected
  counts). Returns chi2, dof (K' - 1, K' = classes kept), p_value, cramers_v (sqrt(chi2 / N_total) for a
  2 x K' table, in [0, 1]: 0 = same fractions, 1 = disjoint classes), min_expected (the smallest expected
  cell count; the chi-square approximation wants it >= 5), entropy_diff (H(b) - H(a), plug-in, nats) and
  entropy_diff_ci (percentile bootstrap, the arms resampled independently with default_rng(seed); for arms
  paired by seed and positively correlated it is too wide, like the test is conservative).
  """
  a, b = _as_counts(counts_a, 'counts_a'), _as_counts(counts_b, 'counts_b')
  if a.shape != b.shape:
    raise ValueError(f'counts_a and counts_b need the same classes, got shapes {a.shape} and {b.shape}')
  table = np.stack([a, b])
  table = table[:, table.sum(0) > 0]
  if table.shape[1] < 2:  # every sample in one class, in both arms: identical compositions
    chi2, p_value, dof, min_expected = 0.0, 1.0, 0, float(table.sum(0).min() / 2)
  else:
    chi2, p_value, dof, expected = stats.chi2_contingency(table, correction=False)
    min_expected = float(expected.min())
  rng = np.random.default_rng(seed)
  boot_a = entropy(_bootstrap_fractions(a, num_bootstrap, rng))
  boot_b = entropy(_bootstrap_fractions(b, num_bootstrap, rng))
  return dict(chi2=float(chi2), dof=int(dof), p_value=float(p_value),
              cramers_v=float(np.sqrt(chi2 / table.sum())), min_expected=min_expected,
              entropy_diff=float(entropy(b / b.sum()) - entropy(a / a.sum())),
              entropy_diff_ci=_percentile_ci(boot_b - boot_a, level), n_a=int(a.sum()), n_b=int(b.sum()))


def stuart_maxwell_test(labels_a, labels_b, num_classes):
  """Stuart-Maxwell test of marginal homogeneity for paired labels (Stuart, Biometrika 1955; Maxwell, Brit. J.
  Psychiatry 1970): sample i was drawn with the same seed in arms a and b. labels_* (N,) ints in
  [0, num_classes). Returns dict(statistic, dof, p_value, n); for K = 2 it is McNemar's test without
  continuity correction."""
  la, lb = np.asarray(labels_a), np.asarray(labels_b)
  if la.ndim != 1 or la.shape != lb.shape or la.size == 0:
    raise ValueError(f'labels_a and labels_b must be (N,) of the same N > 0, got {la.shape} and {lb.shape}')
  if min(la.min(), lb.min()) < 0 or max(la.max(), lb.max()) >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes})')
  la, lb = la.astype(np.int64), lb.astype(np.int64)
  table = np.zeros((num_classes, num_classes), dtype=np.float64)
  np.add.at(table, (la, lb), 1)
  off = table - np.diag(np.diag(table))
  # Covariance of the margin differences d = rows - columns under homogeneity: the graph Laplacian of the
  # disagreement counts. Its null space (one vector per connected group of classes) is orthogonal to d, so the
  # pseudo-inverse gives the usual statistic (one class dropped) and handles classes never disagreed on.
  cov = -(off + off.T)
  cov[np.diag_indices_from(cov)] = off.sum(1) + off.sum(0)
  d = off.sum(1) - off.sum(0)
  dof = int(np.linalg.matrix_rank(cov))
  if dof == 0:  # no disagreements at all
    return dict(statistic=0.0, dof=0, p_value=1.0, n=int(la.size))
  statistic = float(d @ np.linalg.pinv(cov, hermitian=True) @ d)
  return dict(statistic=statistic, dof=dof, p_value=float(stats.chi2.sf(statistic, dof)), n=int(la.size))
