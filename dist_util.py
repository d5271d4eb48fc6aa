"""torch.distributed glue for runs launched with torchrun (one process per GPU, or several CPU processes).

Launch:  torchrun --nproc_per_node=8 main.py --config=... --workdir=... --mode=train|eval|sample
Without torchrun (WORLD_SIZE unset) every function here is a no-op and the code runs as one process.

* Training: DistributedDataParallel; the global batch (config.training.batch_size) is split over ranks, rank r
  taking rows r, r + W, ... Its t, eps and flips are drawn for the whole global batch on every rank and sliced
  the same way, so a run resumed with another number of processes continues the same schedule (dropout masks
  are the exception: they are drawn per rank).
* Statistics (fid_stats, late-start moments): each rank streams every W-th batch; the moment sums are reduced.
* Sampling: sample i always uses the seed sample_seed(seed, i); rank r draws samples r, r + W, r + 2W, ...
  and the results are gathered back into index order, so the samples do not depend on the number of GPUs.
* Only rank 0 writes files (checkpoints, npz, tables, TensorBoard).
* Failures: the training loss is averaged over the ranks every step, so a NaN on one rank stops every rank in
  the same step (run_lib); a rank that raises leaves the others blocked in a collective until torchrun's agent,
  seeing one worker exit non-zero, stops them (measured: tests/test_dist_util.py).
"""
import atexit
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist


def get_device(config):
  """config.device 'auto' -> this process's CUDA device when present, else CPU; 'cuda' without CUDA is an error."""
  from errors import InputError
  if config.device == 'cuda' and not torch.cuda.is_available():
    raise InputError('config.device="cuda" but CUDA is not available; use --config.device=cpu or auto')
  if config.device in ('auto', 'cuda') and torch.cuda.is_available():
    return torch.device('cuda', local_rank())  # torchrun: one GPU per process
  return torch.device('cpu' if config.device == 'auto' else config.device)


def world_size():
  return int(os.environ.get('WORLD_SIZE', '1'))


def rank():
  return int(os.environ.get('RANK', '0'))


def local_rank():
  return int(os.environ.get('LOCAL_RANK', '0'))


def is_main():
  return rank() == 0


def init():
  """Joins the process group once when launched by torchrun (nccl on CUDA, gloo on CPU)."""
  if world_size() > 1 and not dist.is_initialized():
    if torch.cuda.is_available():
      torch.cuda.set_device(local_rank())
    dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    # Without an explicit destroy, gloo's threads can abort the interpreter at exit ("terminate called
    # without an active exception", SIGABRT) after all the work is done.
    atexit.register(cleanup)


def cleanup():
  if dist.is_initialized():
    dist.destroy_process_group()


def barrier():
  if dist.is_initialized():
    dist.barrier()


def mean_over_ranks(tensor):
  """The mean of ``tensor`` over the ranks, on every rank (``tensor.detach()`` itself in one process).

  For the training loss: each rank's loss is the mean over its equal share of the global batch, so the mean
  over ranks is the loss of the whole global batch, and a NaN on one rank reaches every rank in the same step.
  """
  tensor = tensor.detach()
  if not dist.is_initialized() or world_size() == 1:
    return tensor
  out = tensor.clone()
  dist.all_reduce(out)
  return out / world_size()


def exit_all(line, wait_s=60.0, code=1):
  """Prints ``line`` and ends the process with exit status ``code`` (1 unless said; one process: print, exit).

  Under torchrun this rank first waits, at most ``wait_s`` seconds, until every rank has called exit_all, so
  that ranks that hit the same error (a checkpoint that does not load) each report it before torchrun's agent
  stops the group. The wait goes through the rendezvous store, not a collective: a healthy rank may be blocked
  in a collective this rank will never join, and a collective barrier would then wait out the process group's
  30-minute timeout (dist.monitored_barrier does, on every rank but 0).
  """
  if not dist.is_initialized() or world_size() == 1:
    if code == 1:
      sys.exit(line)  # prints the line to stderr, exit status 1
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)
  print(line, file=sys.stderr, flush=True)
  try:
    store = dist.distributed_c10d._get_default_store()
    key = f'exit_all/{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}'
    store.add(key, 1)
    deadline = time.monotonic() + wait_s
    while store.add(key, 0) < world_size() and time.monotonic() < deadline:
      time.sleep(0.05)
  except Exception:  # no store left (the agent is gone): exit anyway
    pass
  sys.exit(code)


def shard(indices):
  """This rank's share of a list of global indices (strided, so every rank gets a near-equal share).

  Joins the process group first (``init``): a share is always gathered or reduced afterwards, and a mode that
  did not call init would otherwise keep only its own share.
  """
  init()
  return list(indices)[rank()::world_size()]


def gather_ordered(local, local_indices, total):
  """Reassembles per-rank rows into global index order on every rank.

  local: numpy (n_local, ...) whose row j is global item local_indices[j]; returns numpy (total, ...).
  """
  if not dist.is_initialized() or world_size() == 1:
    return local
  parts = [None] * world_size()
  dist.all_gather_object(parts, (list(local_indices), local))
  out = None
  for idx, rows in parts:
    if out is None:
      out = np.empty((total,) + rows.shape[1:], rows.dtype)
    if len(idx):
      out[np.asarray(idx)] = rows
  return out


def wrap_model(model):
  """DistributedDataParallel around ``model`` when running under torchrun, else ``model`` itself."""
  if not dist.is_initialized() or world_size() == 1:
    return model
  ids = [local_rank()] if torch.cuda.is_available() else None
  return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model):
  """The bare module inside DistributedDataParallel / nn.DataParallel (what wrap_model put around it), else model."""
  wrapped = isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel))
  return model.module if wrapped else model
