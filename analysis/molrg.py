"""Mixture of low-rank Gaussians (MoLRG; Wang et al. 2024; docs/gen.md).

K classes, each a d-dimensional subspace of R^D; the bases U_k (D, d) are disjoint column
blocks of one Haar-random orthogonal matrix, so they are mutually orthogonal.
A sample is x = U_k a with a ~ N(0, I_d) and k uniform.
"""
import numpy as np
import torch

from datasets import molrg_bases, molrg_sample  # noqa: F401  (data generation lives with the data)


# ------------------------------------------------------------------------------- exact denoiser
def _bases_list(bases):
  """(K, D, d) array/tensor or a list of (D, d_k) blocks -> list of float64 tensors (D, d_k)."""
  blocks = [b if torch.is_tensor(b) else torch.as_tensor(np.asarray(b), dtype=torch.float64) for b in bases]
  if not blocks or any(b.dim() != 2 or b.shape[0] != blocks[0].shape[0] for b in blocks):
    raise ValueError('bases must be (K, D, d) or a non-empty list of (D, d_k) arrays with one D, got '
                     f'{[tuple(b.shape) for b in blocks]}')
  return blocks


def molrg_x0(x_t, alpha_bar, bases):
  """Exact E[x0 | x_t] for MoLRG data (docs/gen.md), x_t = s x0 + g n with s^2 = a, g^2 = 1 - a.

  Derivation (x0 = U_k c, c ~ N(0, I_{d_k}), k uniform, U_k orthonormal columns):
    given k, x_t ~ N(0, Sigma_k) with Sigma_k = g^2 I + s^2 U_k U_k^T, so
    Sigma_k^-1 = (I - P_k)/g^2 + P_k/(s^2+g^2) and log det Sigma_k = D log g^2 + d_k log((s^2+g^2)/g^2);
    log p(k | x_t) = s^2 ||U_k^T x||^2 / (2 g^2 (s^2+g^2)) - d_k/2 log((s^2+g^2)/g^2) + const
    (the log-det term cancels in the softmax when all d_k are equal);
    E[x0 | x_t, k] = s/(s^2+g^2) U_k U_k^T x_t (Gaussian conditioning).
  At a = 1 (g = 0) g^2 is clamped to sqrt(finfo.tiny), so the softmax is the hard argmax (the projection).

  Args:
    x_t: (B, D) or (B, C, H, W) with C*H*W = D, any float dtype (the maths runs in that dtype).
    alpha_bar: float, 0-d tensor or (B,) tensor in (0, 1].
    bases: (K, D, d) from molrg_bases, or a list of (D, d_k).
  Returns: x0_pred, same shape/dtype/device as x_t.
  """
  blocks = [b.to(device=x_t.device, dtype=x_t.dtype) for b in _bases_list(bases)]
  dim = blocks[0].shape[0]
  if x_t.dim() < 2 or int(np.prod(x_t.shape[1:])) != dim:
    raise ValueError(f'x_t has shape {tuple(x_t.shape)}, expected (B, {dim}) or (B, C, H, W) with C*H*W = {dim}')
  x = x_t.reshape(x_t.shape[0], dim)
  a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
  a = a.expand(x.shape[0]) if a.dim() == 0 else a
  tiny = torch.finfo(x.dtype).tiny ** 0.5
  s2, g2 = a, (1 - a).clamp_min(tiny)
  proj = [x @ b for b in blocks]  # U_k^T x_t, (B, d_k)
  logits = torch.stack([
      s2 * (p ** 2).sum(1) / (2 * g2 * (s2 + g2)) - 0.5 * b.shape[1] * torch.log((s2 + g2) / g2)
      for p, b in zip(proj, blocks)], dim=1)  # (B, K): log p(k | x_t) up to a constant
  w = torch.softmax(logits, dim=1)
  coef = (s2.sqrt() / (s2 + g2))[:, None]  # s / (s^2 + g^2)
  x0 = sum(w[:, k:k + 1] * coef * (p @ b.T) for k, (p, b) in enumerate(zip(proj, blocks)))
  return x0.reshape(x_t.shape)


class MoLRGDenoiser:
  """Exact MoLRG denoiser as a sampler eps function: ``.x0(x, t)``, ``.eps(x, t)``, ``__call__ = eps``.

  bases: (K, D, d) (numpy, e.g. from molrg_bases) or a list of (D, d_k); schedule: sde_lib.DDPMSchedule.
  x: (B, D) or (B, C, H, W); t: python number or (B,) tensor in [-1, T-1] (fractional allowed).
  """

  def __init__(self, bases, schedule):
    self.bases = _bases_list(bases)
    self.schedule = schedule
    self.dim = self.bases[0].shape[0]

  def x0(self, x, t):
    return molrg_x0(x, self.schedule.alpha_bar(t), self.bases)

  def eps(self, x, t):
    if bool((torch.as_tensor(t) < 0).any()):
      raise ValueError(f'eps is undefined at t = -1 (alpha_bar = 1); got t = {t}. Use .x0 there.')
    return self.schedule.eps_from_x0(x, t, self.x0(x, t))

  def __call__(self, x, t):
    return self.eps(x, t)
