"""The samplers' per-step callback, and the one callback this code base ships: a trajectory recorder.

Every sampler calls ``callback(t, x, x0_pred)`` once per grid point t, before its step away from t, with the state
x at t (B, ...) and the network's x0-prediction there, as k-diffusion's samplers report each step. The samplers
always return the final x0 alone; a caller that wants the path passes a ``Trajectory``.
"""


class Trajectory:
  """Records each step's t, x and x0_pred as detached CPU copies; ``traj['x'][i]`` is the state at ``traj['t'][i]``.

  Handed to a sampler as its callback (or to sampling.generate, which hands it to every batch in turn).
  """

  def __init__(self):
    self.t, self.x, self.x0_pred = [], [], []

  def __call__(self, t, x, x0_pred):
    self.t.append(t)
    self.x.append(x.detach().to('cpu', copy=True))
    self.x0_pred.append(x0_pred.detach().to('cpu', copy=True))

  def __getitem__(self, key):
    """traj['t'] / traj['x'] / traj['x0_pred']: the lists by name."""
    if key not in ('t', 'x', 'x0_pred'):
      raise KeyError(key)
    return getattr(self, key)
