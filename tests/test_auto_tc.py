"""The late-start time chosen without a sweep (samplers/auto_tc.py, late_start.choose_t_start): the rule's pieces, its
behaviour on data whose score is known in closed form, and t_start='auto' in sample and eval mode."""
import json
import math
import os

import numpy as np
import pytest
import torch

import eval_lib
import late_start
import sampling
import sample_lib
import sde_lib
from samplers import auto_tc

SCHEDULE = sde_lib.DDPMSchedule()
D = 64  # the tiny digits config's 1 x 8 x 8 pixels


def test_candidates_are_the_stride_multiples_with_room_for_n_steps_and_the_vanilla_time():
  assert auto_tc.candidates(1000, 10, 100) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 999]
  assert auto_tc.candidates(1000, 150, 100) == [200, 300, 400, 500, 600, 700, 800, 900, 999]
  assert auto_tc.candidates(1000, 3, 250) == [250, 500, 750, 999]
  with pytest.raises(ValueError, match='auto_tc_stride'):
    auto_tc.candidates(1000, 3, 0)


def test_choose_takes_the_smallest_error_ties_to_the_later_time_and_never_a_diverged_run():
  assert auto_tc.choose({100: 0.3, 200: 0.1, 300: 0.2}) == 200
  assert auto_tc.choose({100: 0.1, 200: 0.1, 300: 0.2}) == 200
  assert auto_tc.choose({100: float('nan'), 200: float('inf'), 300: 0.2}) == 300
  with pytest.raises(ValueError, match='non-finite'):
    auto_tc.choose({100: float('nan')})


def _late_start(mean, cov, shape=(1, 8, 8)):
  from samplers.initialisers import GaussianLateStart
  return GaussianLateStart.from_moments(SCHEDULE, 999, mean, cov, shape)


def _random_gaussian(seed, dim=D, scale=8, ridge=0.05):
  a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / scale
  return np.full(dim, 0.1), (a @ a.T / (dim / D) + ridge * torch.eye(dim, dtype=torch.float64)).numpy()


def _pair(m_value=0.25, sigma0=0.3, dim=D):
  """The symmetric pair +-m + sigma0 * noise (equal weights) of the SSB paper, its exact eps, and its moments.
  x_t | s ~ N(s sqrt(a) m, c I), c = a sigma0^2 + 1 - a, so eps = sqrt(1 - a) (x - sqrt(a) m tanh(sqrt(a) m.x / c)) / c."""
  m = torch.full((dim,), m_value, dtype=torch.float64)

  def eps_fn(x, t):
    a = float(SCHEDULE.alpha_bar(float(t)))
    c = a * sigma0 ** 2 + 1 - a
    flat = x.reshape(len(x), -1).double()
    w = torch.tanh(math.sqrt(a) * flat @ m / c)[:, None]
    return (math.sqrt(1 - a) * (flat - math.sqrt(a) * w * m) / c).reshape(x.shape).to(x.dtype)

  def draw(count, seed):
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (count, 1), generator=g).double() * 2 - 1
    return (sign * m + sigma0 * torch.randn(count, dim, generator=g, dtype=torch.float64)).reshape(count, 1, 1, dim)

  cov = torch.outer(m, m) + sigma0 ** 2 * torch.eye(dim, dtype=torch.float64)
  return eps_fn, draw, np.zeros(dim), cov.numpy(), m, sigma0


def test_gaussian_eps_is_the_closed_form_of_the_fitted_gaussian():
  mean, cov = _random_gaussian(0)
  x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  for t in (0, 300, 999):
    a = float(SCHEDULE.alpha_bar(t))
    c = a * torch.as_tensor(cov) + (1 - a) * torch.eye(D, dtype=torch.float64)
    want = math.sqrt(1 - a) * torch.linalg.solve(c, (x.reshape(5, -1) - math.sqrt(a) * torch.as_tensor(mean)).T).T
    torch.testing.assert_close(auto_tc.gaussian_eps(_late_start(mean, cov), SCHEDULE, x, t), want)


def test_the_late_start_kl_equals_the_kl_of_the_noised_pair_to_its_gaussian():
  """The Fokker-Planck identity against a direct quadrature: along m the noised pair is (N(-mu, c) + N(mu, c)) / 2
  and the Gaussian N(0, mu^2 + c); the other directions agree exactly, so KL(p_t || G_t) is one 1-D integral."""
  eps_fn, draw, mean, cov, m, sigma0 = _pair()
  fit = _late_start(mean, cov, shape=(1, 1, D))
  times = list(range(10, 999, 10)) + [999]
  gaps = auto_tc.eps_gap(eps_fn, fit, SCHEDULE, draw(2000, 0), times, torch.Generator().manual_seed(2))
  kl = auto_tc.late_start_kl(SCHEDULE, gaps)
  u = np.linspace(-12, 12, 20001)
  for t in (100, 200, 400):
    a = float(SCHEDULE.alpha_bar(t))
    mu, c = math.sqrt(a) * float(m.norm()), a * sigma0 ** 2 + 1 - a
    p = 0.5 * (np.exp(-(u - mu) ** 2 / (2 * c)) + np.exp(-(u + mu) ** 2 / (2 * c))) / math.sqrt(2 * math.pi * c)
    q = np.exp(-u ** 2 / (2 * (mu ** 2 + c))) / math.sqrt(2 * math.pi * (mu ** 2 + c))
    direct = float(np.trapezoid(p * np.log(p / q), u))
    assert kl[t] == pytest.approx(direct, rel=0.1), (t, kl[t], direct)


def _empirical_kl(out, mean, var_exact, vecs):
  """KL(N(empirical moments of out) || N(mean, V diag(var_exact) V^T)) for out (N, D)."""
  mu, cov = out.mean(0), torch.cov(out.T)
  target = (vecs * var_exact) @ vecs.T
  inv = torch.linalg.inv(target)
  d = mu - mean
  return float(0.5 * (torch.trace(inv @ cov) + d @ inv @ d - len(mu) + torch.logdet(target) - torch.logdet(cov)))


@pytest.mark.parametrize('method,n,t_c', [('ddim', 3, 999), ('pndm', 3, 600), ('unipc', 4, 300),
                                           ('dpmpp_2m', 5, 999)])
def test_solver_kl_equals_the_kl_of_the_sampler_run_on_many_gaussian_draws(method, n, t_c):
  """The eigenbasis shortcut against the sampler run in pixel space on 40,000 draws of a 16-pixel Gaussian (the
  empirical KL's bias, about D^2 / 4N = 0.002, is below the tolerance; every case has KL above 0.1)."""
  import samplers
  from samplers import grids
  mean, cov = _random_gaussian(3, dim=16, scale=2, ridge=0.2)  # eigenvalues 0.26 to 11.6: none lifted to the floor
  fit = _late_start(mean, cov, shape=(1, 4, 4))
  timesteps = grids.make_grid('late_start', n, t_c, 1000)
  vanilla = t_c == 999
  kl = auto_tc.solver_kl(samplers.get_sampler(method), {}, SCHEDULE, fit, timesteps, vanilla=vanilla)
  gen = torch.Generator().manual_seed(4)
  x_init = (torch.randn(40000, 1, 4, 4, generator=gen, dtype=torch.float64) if vanilla
            else fit.at(t_c).sample(40000, gen))
  eps_fn = lambda x, t: auto_tc.gaussian_eps(fit, SCHEDULE, x, t).reshape(x.shape)  # noqa: E731
  out = samplers.get_sampler(method)(eps_fn, SCHEDULE, x_init, timesteps).reshape(40000, -1)
  a0, lam = float(SCHEDULE.alpha_bar(0)), fit.eigvals.double()
  empirical = _empirical_kl(out, torch.as_tensor(mean), a0 * lam ** 2 / (a0 * lam + 1 - a0), fit.eigvecs.double())
  assert kl > 0.1 and kl == pytest.approx(empirical, rel=0.05, abs=0.01), (kl, empirical)


@pytest.mark.parametrize('shift', [0, 25, -25])
def test_eps_gap_sees_a_network_whose_time_argument_is_shifted(shift):
  """A network that is the exact Gaussian eps at time t + shift, on data drawn from that Gaussian: per eigendirection
  x_t ~ N(sqrt(a_t) m, a_t lam + 1 - a_t) and eps_s(x) = c_s (x - sqrt(a_s) m), c_s = sqrt(1 - a_s) / (a_s lam + 1 -
  a_s), so E||eps_{t+shift} - eps_t||^2 = sum (c_s - c_t)^2 (a_t lam + 1 - a_t) + (c_s (sqrt(a_t) - sqrt(a_s)) m)^2.
  eps_gap must give it to Monte-Carlo error (rel 3% with 20,000 draws), and shift 0 must give 0: eps_gap calling
  the network at t + 1 fails every case (tried)."""
  mean, cov = _random_gaussian(3, dim=16, scale=2)
  fit = _late_start(mean, cov, shape=(1, 4, 4))
  _, lam, vecs = auto_tc._fit(fit)
  m = vecs.T @ torch.as_tensor(mean)
  count = 20000
  chol = torch.linalg.cholesky(torch.as_tensor(cov))
  x0 = (torch.as_tensor(mean) + torch.randn(count, 16, generator=torch.Generator().manual_seed(4),
                                            dtype=torch.float64) @ chol.T).reshape(count, 1, 4, 4)
  eps_fn = lambda x, t: auto_tc.gaussian_eps(fit, SCHEDULE, x, t + shift).reshape(x.shape)  # noqa: E731
  times = (100, 400, 800)
  gaps = auto_tc.eps_gap(eps_fn, fit, SCHEDULE, x0, times, torch.Generator().manual_seed(5))
  for t in times:
    a_t, a_s = float(SCHEDULE.alpha_bar(t)), float(SCHEDULE.alpha_bar(t + shift))
    c_t, c_s = (math.sqrt(1 - a) / (a * lam + 1 - a) for a in (a_t, a_s))
    want = float(((c_s - c_t) ** 2 * (a_t * lam + 1 - a_t) + (c_s * (math.sqrt(a_t) - math.sqrt(a_s)) * m) ** 2).sum())
    if shift == 0:
      assert gaps[t] < 1e-9, gaps
    else:
      assert gaps[t] == pytest.approx(want, rel=0.03), (t, gaps[t], want)


def test_the_late_start_kl_of_per_direction_gaps_sums_to_the_kl_of_their_totals():
  """Tensor gaps (one per direction) give per-direction KLs, each t_c its own sum, adding up to the scalar rule's."""
  gen = torch.Generator().manual_seed(0)
  gaps = {t: torch.rand(3, generator=gen, dtype=torch.float64) for t in (100, 300, 600, 999)}
  per_direction = auto_tc.late_start_kl(SCHEDULE, gaps)
  total = auto_tc.late_start_kl(SCHEDULE, {t: float(g.sum()) for t, g in gaps.items()})
  assert total[999] == 0 and total[100] > total[300] > total[600] > 0
  for t in gaps:
    assert float(per_direction[t].sum()) == pytest.approx(total[t], rel=1e-12)


def test_solver_kl_with_smoothing_is_smaller_and_zero_smoothing_is_the_rule():
  from samplers import get_sampler, grids
  mean, cov = _random_gaussian(3, dim=16, scale=2, ridge=0.2)
  fit = _late_start(mean, cov, shape=(1, 4, 4))
  timesteps = grids.make_grid('late_start', 3, 999, 1000)
  rule = auto_tc.solver_kl(get_sampler('ddim'), {}, SCHEDULE, fit, timesteps, vanilla=True)
  assert auto_tc.solver_kl(get_sampler('ddim'), {}, SCHEDULE, fit, timesteps, vanilla=True, phi=0.0) == rule
  assert 0 < auto_tc.solver_kl(get_sampler('ddim'), {}, SCHEDULE, fit, timesteps, vanilla=True, phi=1.0) < rule


def _spec(config, method, n):
  return sampling.RunSpec.from_config(config.sampling, method=method, num_steps=n, init='gls', t_start='auto')


def _config(tiny_config, samples=64, stride=100):
  tiny_config.sampling.auto_tc_samples = samples
  tiny_config.sampling.auto_tc_stride = stride
  return tiny_config


def test_on_gaussian_data_the_late_start_loses_nothing(tiny_config):
  """Exact Gaussian eps: the late start's KL is 0 at every t_c, so the choice is the sampler's best t_c."""
  mean, cov = _random_gaussian(0)
  fit = _late_start(mean, cov)
  eps_fn = lambda x, t: auto_tc.gaussian_eps(fit, SCHEDULE, x, t).reshape(x.shape).float()  # noqa: E731
  moments = {'mean': mean, 'cov': cov}
  choice = late_start.choose_t_start(_config(tiny_config), SCHEDULE, eps_fn, _spec(tiny_config, 'ddim', 3),
                                     moments=moments)
  assert max(choice['late_start_kl'].values()) < 1e-6
  assert str(choice['t_start']) == min(choice['solver_kl'], key=choice['solver_kl'].get)
  assert choice['solver_kl']['999'] > 10 * choice['solver_kl'][str(choice['t_start'])]


def test_on_the_symmetric_pair_the_choice_lies_between_and_fewer_steps_skip_more():
  """For the pair (here in 4 pixels, |m| = 2, sigma0 = 0.3) the late start's KL grows below the split (0.32 nats at
  t_c = 200, 0.99 at 50) while DDIM's KL grows with the range it covers (5.3 nats from T-1 at n = 3): the sum has
  its minimum strictly inside, and three steps choose an earlier t_c than ten (measured: 200 and 350)."""
  import samplers
  from samplers import grids
  eps_fn, draw, mean, cov, _, _ = _pair(m_value=1.0, sigma0=0.3, dim=4)
  fit = _late_start(mean, cov, shape=(1, 1, 4))
  times = auto_tc.candidates(1000, 1, 50)
  late = auto_tc.late_start_kl(SCHEDULE, auto_tc.eps_gap(eps_fn, fit, SCHEDULE, draw(256, 0), times,
                                                         torch.Generator().manual_seed(2)))
  chosen = {}
  for n in (3, 10):
    total = {t: late[t] + auto_tc.solver_kl(samplers.ddim, {}, SCHEDULE, fit, grids.make_grid('late_start', n, t, 1000),
                                            vanilla=t == 999) for t in auto_tc.candidates(1000, n, 50)}
    chosen[n] = auto_tc.choose(total)
    assert 50 < chosen[n] < 999 and total[chosen[n]] < min(total[50], total[999]), total
  assert chosen[3] < chosen[10], chosen


def test_the_choice_is_deterministic_and_the_network_part_is_measured_once(tiny_config):
  mean, cov = _random_gaussian(1)
  fit = _late_start(mean, cov)
  calls = []

  def eps_fn(x, t):
    calls.append(len(x))
    return auto_tc.gaussian_eps(fit, SCHEDULE, x, t).reshape(x.shape).float() * 1.1  # a deliberately wrong eps
  config, moments, cache = _config(tiny_config, samples=8), {'mean': mean, 'cov': cov}, {}
  first = late_start.choose_t_start(config, SCHEDULE, eps_fn, _spec(config, 'ddim', 5), moments=moments, cache=cache)
  assert first['network_calls'] == sum(calls) == 8 * 10  # 8 images at the 10 candidates of stride 100
  again = late_start.choose_t_start(config, SCHEDULE, eps_fn, _spec(config, 'ddim', 5), moments=moments)  # a fresh cache
  assert first['total'] == again['total'] and first['t_start'] == again['t_start']
  ddpm = late_start.choose_t_start(config, SCHEDULE, eps_fn, _spec(config, 'ddpm', 5), moments=moments, cache=cache)
  assert ddpm['network_calls'] == 0 and ddpm['proxy'] == 'ddim' and ddpm['total'] == first['total']


def test_a_rank_r_or_monte_carlo_fit_is_refused_in_one_line(tiny_config):
  from errors import InputError
  for field, value in (('gls_rank', 8), ('gls_fit', 'monte_carlo')):
    config = _config(tiny_config.copy_and_resolve_references())
    config.sampling[field] = value
    with pytest.raises(InputError, match='full-covariance late start'):
      late_start.choose_t_start(config, SCHEDULE, None, _spec(config, 'ddim', 3))


# ------------------------------------------------------------------------------------------ modes
@pytest.fixture
def trained(trained_workdir, tmp_path_factory):
  from conftest import TRAINED_OVERRIDES, copy_workdir, tiny_digits_config
  tmp = tmp_path_factory.mktemp('auto')
  config = tiny_digits_config(tmp, **TRAINED_OVERRIDES)
  config.sampling.auto_tc_samples, config.sampling.auto_tc_stride = 8, 250
  return config, copy_workdir(trained_workdir, tmp / 'run')


def test_sample_mode_with_auto_writes_the_choice_beside_the_samples(trained, tmp_path):
  config, workdir = trained
  config.sampling.method, config.sampling.num_steps, config.sampling.init = 'ddim', 3, 'gls'
  config.sampling.t_start = 'auto'
  path = sample_lib.sample(config, workdir, sample_out=str(tmp_path / 'x.npz'))
  with np.load(path) as f:
    choice, timesteps = json.loads(str(f['auto_tc'])), tuple(f['timesteps'])
  assert timesteps[0] == choice['t_start'] in (250, 500, 750, 999) and len(timesteps) == 3
  assert sorted(map(int, choice['total'])) == [250, 500, 750, 999] and choice['network_calls'] == 8 * 4
  again = sample_lib.sample(config, workdir, sample_out=str(tmp_path / 'y.npz'))
  np.testing.assert_array_equal(np.load(again)['samples'], np.load(path)['samples'])


def test_eval_runs_the_auto_cell_records_its_choice_and_compares_it_with_the_sweep(trained, monkeypatch):
  config, workdir = trained
  config.eval.methods, config.eval.num_steps, config.eval.t_starts = ('ddim', 'ddpm'), (3,), ('auto', 250, 500)
  config.eval.kid_subset_size = 8
  monkeypatch.setenv('SSB_CACHE_DIR', os.path.join(workdir, 'cache'))
  eval_lib.fid_stats(config, workdir)
  results = eval_lib.evaluate(config, workdir)
  auto = results['ddim_n3_gls_tcauto_late_start']
  assert auto['tc_rule'] == 'auto' and auto['t_start'] == auto['timesteps'][0] == auto['auto_tc']['t_start']
  assert results['ddpm_n3_gls_tcauto_late_start']['auto_tc']['network_calls'] == 0  # measured once, for DDIM
  outdir = os.path.join(workdir, 'eval')
  table = open(os.path.join(outdir, 'results_auto.md')).read()
  assert 'DDIM | 3 |' in table and 'Within 2 SE of the best in' in table
  assert "t_c of [250, 500]" in open(os.path.join(outdir, 'results.md')).read()  # the Table-1 best is the sweep's
  gain = open(os.path.join(outdir, 'results_gain.md')).read()
  assert gain.count('| DDIM | 3 |') == 1 and 'KID gap' in gain
  calls = []
  monkeypatch.setattr(eval_lib, 'run_cell', lambda *a: calls.append(a))
  eval_lib.evaluate(config, workdir)  # the same signature: nothing is recomputed, the auto cells included
  assert calls == []
