"""Initial states x_init for the samplers (docs/late_start.md); late_start.py fits them to a config's data, and the
samplers never import this.

* StandardNormal(shape, t_start): the vanilla start z ~ N(0, I).
* GaussianLateStart: the Gaussian late start (gls) at t_c = t_start, matching the noised data
  moments mu_t = sqrt(a) mu, Sigma_t = a Sigma + (1 - a) I, a = alpha_bar(t_c). With
  Sigma = U diag(lambda) U^T (one eigendecomposition for every t_c, see ``.at``) a draw is
    x = mu_t + U (sqrt(a lambda + 1 - a) * (U^T z)),     z = the StandardNormal draw,
  i.e. x = mu_t + Sigma_t^{1/2} z with the symmetric square root. The plain factor U (s * z) would
  do too; both have covariance Sigma_t, and the symmetric root makes gls and vanilla share the noise draw in
  the strong sense that x -> z as t_c -> T (a -> 0). Costs two (D x D) matmuls per row.
  Rank r > 0 keeps the top-r eigenpairs plus the diagonal remainder d = diag(Sigma) -
  sum_k lambda_k U_k^2 (so every per-pixel variance a Sigma_ii + 1 - a is preserved):
    x = mu_t + U (sqrt(a lambda) * w) + sqrt(a d + 1 - a) * z,  w ~ N(0, I_r) drawn after z.
* monte_carlo_moments: the paper's fit (one noised copy of each image at t_start, then
  mean/cov); ``GaussianLateStart.from_noised_moments`` uses it at that t only.
* save/load_moments: the data moments file used by the exact gls (workdir.moments_path names it).
"""
import contextlib
import logging
import os

import numpy as np
import torch

import io_util
import rng
from errors import InputError, one_line
from moments import RunningMoments

# The late start's choices, one list each (configs.validation and late_start.build_initialiser read them):
INITS = ('normal', 'gls')  # sampling.init: N(0, I) at t_start, or the Gaussian fitted to the data
GLS_FITS = ('exact', 'monte_carlo')  # sampling.gls_fit: data moments pushed through q, or the paper's one-draw fit
GLS_DTYPES = {'float32': torch.float32, 'float64': torch.float64}  # sampling.gls_dtype of the fit's linear algebra


class StandardNormal:
  """x_init ~ N(0, I) of shape (n, *shape) at time t_start (vanilla start, or the N(0, I) ablation)."""

  def __init__(self, shape, t_start):
    self.shape, self.t_start = tuple(shape), int(t_start)

  def sample(self, n, generator, device='cpu', dtype=torch.float32):
    """(n, *shape) draw via rng.randn (per-sample generators -> batch-independent)."""
    return rng.randn((n, *self.shape), generator, device=device).to(dtype)


def _check_square(mean, cov):
  if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
    raise ValueError(f'moments must be mean (D,) and cov (D, D), got {tuple(mean.shape)} and '
                     f'{tuple(cov.shape)}')


def partial_fit_pays(dim, rank) -> bool:
  """True when a rank-r subspace iteration beats the full eigh: D >= 1024 and the block (2r + 16) <= D / 4."""
  return dim >= 1024 and 4 * _block_size(rank) <= dim


def _block_size(rank):
  return 2 * rank + 16  # oversampling by r + 16 makes the Ritz values converge at (lambda_{2r+17} / lambda_r)^i


def _fix_signs(vecs):
  """Flips each column so that its largest-magnitude entry is positive: a rank-r fit then draws the same samples
  whichever solver found it (the symmetric full-rank root does not depend on signs)."""
  idx = vecs.abs().argmax(dim=0)
  signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1])])
  return vecs * torch.where(signs == 0, torch.ones_like(signs), signs)


def _orthonormalise(y):
  """Orthonormal basis of the columns of y (D, k): Cholesky QR twice (GEMMs only, stable to cond(y) ~ 1e7),
  Householder QR when y is (near) rank-deficient."""
  for _ in range(2):
    gram = y.T @ y
    with _one_thread():
      chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
      return torch.linalg.qr(y).Q
    y = torch.linalg.solve_triangular(chol.T, y, upper=True, left=False)
  return y


@contextlib.contextmanager
def _one_thread():
  """Small (k x k) LAPACK calls: one thread is as fast, and avoids a ~30x slow-down on a busy machine (MKL's
  threads spin against other processes)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)


def _is_symmetric(cov, block=1024):
  """Exact symmetry test in row blocks (no (D, D) temporary)."""
  return all(torch.equal(cov[i:i + block], cov[:, i:i + block].T) for i in range(0, cov.shape[0], block))


def top_eigenpairs(cov, rank, tol=1e-8, max_iter=300, seed=0):
  """Top-r eigenpairs of the symmetric part of cov (D, D) float64 -> (eigvals (r,) descending, >= 0,
  eigvecs (D, r) orthonormal, signs as _fix_signs), by subspace iteration with Rayleigh-Ritz ("Finding
  structure with randomness", Halko, Martinsson and Tropp 2011, Algorithms 4.4 and 5.3).

  Cost: O(D^2 (2r + 16)) per iteration and no (D, D) temporary (the full eigh needs several). It stops when every
  Ritz pair has ||S v - theta v|| <= tol * max(theta, 1e-6 theta_1), which bounds each eigenvalue's error by
  that residual; if that never happens in max_iter iterations (a flat spectrum), the full eigh is used.
  """
  dim = cov.shape[0]
  k = min(_block_size(rank), dim)
  if _is_symmetric(cov):
    apply = lambda q: cov @ q  # noqa: E731
  else:  # round-off asymmetry from streaming: S q = (C q + C^T q) / 2 without forming S
    apply = lambda q: 0.5 * (cov @ q + cov.T @ q)  # noqa: E731
  gen = torch.Generator().manual_seed(seed)
  q = _orthonormalise(torch.randn(dim, k, generator=gen, dtype=torch.float64))
  for _ in range(max_iter):
    y = apply(q)
    t = q.T @ y
    with _one_thread():
      theta, w = torch.linalg.eigh(0.5 * (t + t.T))  # Rayleigh-Ritz on the block, ascending
    theta, w = theta.flip(0)[:rank], w.flip(1)[:, :rank]
    vecs = q @ w
    resid = (y @ w - vecs * theta).norm(dim=0)
    floor = 1e-6 * max(float(theta[0]), 0.0)  # eigenvalues below 1e-6 lambda_1 (or 0) need absolute accuracy only
    if bool((resid <= tol * theta.abs().clamp(min=floor)).all()):
      return theta.clamp(min=0), _fix_signs(vecs)
    q = _orthonormalise(y)
  logging.warning('late start: the rank-%d subspace iteration did not converge in %d iterations (flat '
                  'spectrum?); using the full eigendecomposition', rank, max_iter)
  eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.T))
  return eigvals[-rank:].flip(0).clamp(min=0), _fix_signs(eigvecs[:, -rank:].flip(1))


class GaussianLateStart:
  """Gaussian late start at t_start (module doc). State: mean, eigenpairs, optional remainder.

  Args:
    schedule: sde_lib.DDPMSchedule (None for a fixed-t Monte-Carlo fit).
    t_start: int in [0, T-1], the first timestep of the sampler grid.
    mean: (D,) data mean (model space). eigvals: (r,) >= 0. eigvecs: (D, r) orthonormal columns.
    shape: per-sample shape with prod(shape) = D, e.g. (3, 32, 32).
    resid_var: None (r = D, full rank) or (D,) diagonal remainder of a rank-r fit.
    dtype: float64 or float32 (for D = 12288: halves the 1.2 GB of a float64 factor).
    noised: True when mean/eigenpairs already describe x_t (Monte-Carlo fit; then a = 1 is used).
  """

  def __init__(self, schedule, t_start, mean, eigvals, eigvecs, shape, resid_var=None,
               dtype=torch.float64, noised=False):
    self.schedule, self.t_start, self.shape, self.dtype = schedule, int(t_start), tuple(shape), dtype
    self.noised = bool(noised)
    def as_t(v):  # tensors of the right dtype are kept as they are (``.at`` shares them)
      return None if v is None else torch.as_tensor(v if torch.is_tensor(v) else np.asarray(v)).to(dtype)
    self.mean, self.eigvals, self.eigvecs = as_t(mean), as_t(eigvals), as_t(eigvecs)
    self.resid_var = as_t(resid_var)
    dim = int(np.prod(self.shape))
    if self.mean.shape != (dim,) or self.eigvecs.shape[0] != dim:
      raise ValueError(f'shape {self.shape} (D = {dim}) does not match mean {tuple(self.mean.shape)}'
                       f' / eigvecs {tuple(self.eigvecs.shape)}; check data.image_size/num_channels')
    if schedule is None and not self.noised:
      raise ValueError('GaussianLateStart needs the schedule unless the moments are already noised')
    if schedule is not None and not 0 <= self.t_start <= schedule.T - 1:
      raise ValueError(f'sampling.t_start must be in [0, {schedule.T - 1}], got {t_start}')
    a = 1.0 if self.noised else float(schedule.alpha_bar(self.t_start))
    self.alpha_bar = a
    # Per-eigendirection std and shifted mean at t_start (docs/late_start.md, "Exact moments").
    full = self.resid_var is None
    self._std = (a * self.eigvals.clamp(min=0) + ((1 - a) if full else 0.0)).sqrt()
    self._mean_t = a ** 0.5 * self.mean
    self._resid_std = None if full else (a * self.resid_var.clamp(min=0) + (1 - a)).sqrt()

  @classmethod
  def from_moments(cls, schedule, t_start, mean, cov, shape, rank=0, dtype=torch.float64, solver='auto'):
    """Eigendecomposes the data covariance once (float64); rank 0 = full, r > 0 = top-r + diagonal.

    solver: 'eigh' = the full (D x D) eigendecomposition, truncated for r > 0 (the reference);
    'subspace' = the top-r eigenpairs only, by subspace iteration (``top_eigenpairs``): for D = 12,288 and
    r = 8 about 30 s on a busy 2-core machine and 0.04 GB instead of ~6 minutes and 7 GB (BENCHMARKS.md);
    'auto' = 'subspace' when 0 < r and it pays off (partial_fit_pays), else 'eigh'. Both give the same rank-r
    fit (eigenvalues to round-off, eigenvectors to ~1e-8, the same signs).
    """
    mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    cov = torch.as_tensor(np.asarray(cov), dtype=torch.float64)
    _check_square(mean, cov)
    dim, rank = mean.shape[0], int(rank)
    if not 0 <= rank <= dim:
      raise ValueError(f'sampling.gls_rank must be in [0, D = {dim}], got {rank}')
    if solver not in ('auto', 'eigh', 'subspace'):
      raise ValueError(f"solver must be 'auto', 'eigh' or 'subspace', got {solver!r}")
    partial = 0 < rank < dim and (solver == 'subspace' or (solver == 'auto' and partial_fit_pays(dim, rank)))
    if partial:
      eigvals, eigvecs = (v.flip(-1) for v in top_eigenpairs(cov, rank))  # ascending, as eigh's
    else:
      # The symmetrised copy and eigh's workspace are what costs 7 GB at D = 12,288.
      eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.T))  # ascending
      eigvals = eigvals.clamp(min=0)
      if not 0 < rank < dim:
        return cls(schedule, t_start, mean, eigvals, eigvecs, shape, dtype=dtype)
      eigvals, eigvecs = eigvals[-rank:], _fix_signs(eigvecs[:, -rank:])
    # Diagonal remainder keeps the per-pixel variance diag(Sigma) exactly (module doc).
    resid = (torch.diagonal(cov) - (eigvecs ** 2) @ eigvals).clamp(min=0)
    return cls(schedule, t_start, mean, eigvals, eigvecs, shape, resid_var=resid, dtype=dtype)

  @classmethod
  def from_noised_moments(cls, t_start, mean_t, cov_t, shape, dtype=torch.float64):
    """gls from moments of x_t itself (monte_carlo_moments); valid at this t_start only."""
    mean_t = torch.as_tensor(np.asarray(mean_t), dtype=torch.float64)
    cov_t = torch.as_tensor(np.asarray(cov_t), dtype=torch.float64)
    _check_square(mean_t, cov_t)
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov_t + cov_t.T))
    return cls(None, t_start, mean_t, eigvals.clamp(min=0), eigvecs, shape, dtype=dtype,
               noised=True)

  def at(self, t_start):
    """The same fit at another t_start, sharing the eigendecomposition (no new factorisation)."""
    if self.noised:
      raise ValueError(f'a Monte-Carlo gls fit holds x_t moments at t = {self.t_start} only; refit '
                       f'at t = {t_start} or use sampling.gls_fit=exact')
    return GaussianLateStart(self.schedule, t_start, self.mean, self.eigvals, self.eigvecs,
                             self.shape, self.resid_var, self.dtype)

  def covariance(self):
    """(D, D) covariance of the draws at t_start (for tests and diagnostics)."""
    if self.resid_var is None:
      return (self.eigvecs * self._std ** 2) @ self.eigvecs.T
    low = (self.eigvecs * (self.alpha_bar * self.eigvals)) @ self.eigvecs.T
    return low + torch.diag(self._resid_std ** 2)

  def sample(self, n, generator, device='cpu', out_dtype=None):
    """(n, *shape) draws; z is the StandardNormal draw of the same generator (module doc)."""
    z = rng.randn((n, *self.shape), generator).reshape(n, -1).to(self.dtype)  # float32 z, as vanilla
    if self.resid_var is None:
      x = ((z @ self.eigvecs) * self._std) @ self.eigvecs.T  # Sigma_t^{1/2} z (symmetric root)
    else:
      w = rng.randn((n, self.eigvecs.shape[1]), generator).to(self.dtype)
      x = (w * (self.alpha_bar ** 0.5 * self.eigvals.sqrt())) @ self.eigvecs.T + self._resid_std * z
    x = x + self._mean_t
    return x.reshape(n, *self.shape).to(device=device, dtype=out_dtype or self.dtype)


# ------------------------------------------------------------------------------- moments
def _flat_batches(batches):
  for b in batches:
    b = b[0] if isinstance(b, (tuple, list)) else b
    yield torch.as_tensor(b).reshape(len(b), -1)


def monte_carlo_moments(batches, schedule, t_start, generator):
  """The paper's fit: one noised copy x_t = q_sample(x0, t_start, eps) per image, then mean/cov.

  Returns dict(mean (D,), cov (D, D), count, t_start); feed it to from_noised_moments.
  """
  acc = None
  for rows in _flat_batches(batches):
    rows = rows.to(torch.float64)
    acc = acc or RunningMoments(rows.shape[1])
    eps = rng.randn(tuple(rows.shape), generator, dtype=torch.float64)
    acc.update(schedule.q_sample(rows, int(t_start), eps))
  if acc is None or acc.n < 2:
    raise ValueError('monte_carlo_moments needs at least 2 images; the data iterator was empty')
  return {'mean': acc.mean(), 'cov': acc.cov(), 'count': acc.n, 't_start': int(t_start)}


# A moments file holds the full covariance ('cov') or a rank-r fit of it (samplers.low_rank_fit).
FIT_KEYS = ('cov', 'var', 'eigvals', 'eigvecs')


def late_start_from_fit(schedule, t_start, moments, shape, rank=0, dtype=torch.float64):
  """GaussianLateStart from a moments dict: the full covariance (from_moments, rank 0 = full) or a streamed rank-r
  fit (mean, var, eigvals, eigvecs; the diagonal remainder keeps every pixel's variance, as from_moments does)."""
  if 'cov' in moments:
    return GaussianLateStart.from_moments(schedule, t_start, moments['mean'], moments['cov'], shape, rank=rank,
                                          dtype=dtype)
  eigvals, eigvecs = (torch.as_tensor(np.asarray(moments[k]), dtype=torch.float64) for k in ('eigvals', 'eigvecs'))
  resid = (torch.as_tensor(np.asarray(moments['var']), dtype=torch.float64) - (eigvecs ** 2) @ eigvals).clamp(min=0)
  return GaussianLateStart(schedule, t_start, moments['mean'], eigvals.flip(0), eigvecs.flip(1), shape,
                           resid_var=resid, dtype=dtype)


class MomentsError(InputError):
  """A late-start moments file is unreadable or belongs to another dataset / image_size / num_channels."""


def save_moments(path, moments, dataset, image_size, num_channels, fingerprint):
  """Atomic npz write (io_util.atomic_write: readers never see a partial file, permissions 0666 minus the umask)
  of mean/cov/count with dataset, image_size, num_channels and the data's fingerprint
  (datasets.data_fingerprint of the training split) recorded."""
  mean = np.asarray(moments['mean'])
  if mean.shape != (num_channels * image_size ** 2,):
    raise ValueError(f'moments of dimension {mean.shape} do not match {num_channels}x{image_size}^2')
  arrays = {k: np.asarray(moments[k]) for k in FIT_KEYS if k in moments}  # the full fit's cov or a low-rank fit
  io_util.save_npz(path, mean=mean, **arrays, count=int(moments['count']),
                   dataset=str(dataset).lower(), image_size=int(image_size), num_channels=int(num_channels),
                   fingerprint=np.str_(fingerprint))


def load_moments(path, dataset, image_size, num_channels, fingerprint=None):
  """Loads a save_moments file and checks it matches the config (and, when given, the data's fingerprint: moments
  of another subset, e.g. written with data.num_train=16, are refused); dict(mean, cov, count).

  FileNotFoundError when missing; MomentsError (one line naming the file) when corrupt or for another config.
  dataset None accepts the file's data set (samplers.diffusers_late_start, where no config names one).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'late-start moments file {path} not found; write it with --mode=gauss_stats (or --mode=fid_stats, '
        f'which also writes it), or point '
        f'sampling.moments_file at an existing file')
  try:
    with np.load(path) as f:
      found = (str(f['dataset']), int(f['image_size']), int(f['num_channels']))
      out = dict({k: f[k] for k in FIT_KEYS if k in f.files}, mean=f['mean'], count=int(f['count']))
      if 'cov' not in out and 'eigvecs' not in out:
        raise KeyError('neither cov nor eigvecs')
      stored = str(f['fingerprint']) if 'fingerprint' in f.files else ''
    if 'cov' in out:
      _check_square(torch.as_tensor(out['mean']), torch.as_tensor(out['cov']))
  except io_util.NPZ_ERRORS as err:
    raise MomentsError(f'late-start moments file {path} is unreadable ({one_line(err)}): the file is corrupt or '
                       f'truncated; delete it and rerun --mode=gauss_stats') from None
  want = (found[0] if dataset is None else str(dataset).lower(), int(image_size), int(num_channels))
  if found != want:
    raise MomentsError(f'moments file {path} holds (dataset, image_size, num_channels) = {found} but '
                       f'the config asks for {want}; recompute it or fix sampling.moments_file')
  if out['mean'].shape != (num_channels * image_size ** 2,):
    raise MomentsError(f'moments file {path} holds a mean of shape {out["mean"].shape} for {want}: the file is '
                       f'corrupt; delete it and rerun --mode=gauss_stats')
  if fingerprint is not None and stored != fingerprint:
    why = ('was written without a data fingerprint (an older version)' if not stored else
           'was computed on other data (the files, config.data.num_train or the split changed)')
    raise MomentsError(f'moments file {path} {why}; delete it and rerun --mode=gauss_stats, or point '
                       'sampling.moments_file at the moments of this data')
  return out
