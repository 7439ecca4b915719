"""The processes of a run: one, or several (multi-host) joined by jax.distributed.

  initialize      starts jax.distributed: explicit --coordinator/--num_processes/--process_id,
                  or detected on a cluster (Slurm, Open MPI, a TPU pod); one process otherwise
  agree           every process runs the same config on the same workdir (checked at start)
  is_primary      process 0 writes what the processes share (config.json, generated data,
                  TensorBoard, metrics, predictions); the others wait at a barrier
  put_rows        global batches: each process places the rows its devices hold (a value
                  every process holds in full goes through jax.device_put as it is)
  fetch           host values of global arrays (gathered from the other processes if needed)

With one process every helper is the plain single-process operation. A process that dies
stops the others: jax's coordination service sees its heartbeats stop and terminates them
with a message naming the task, within mesh.heartbeat_timeout_s.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vsr_jax.config_lib import ConfigError

# Environment variables by which a cluster launcher says this process is one of several:
# jax.distributed.initialize() then finds the coordinator, count and index by itself.
CLUSTER_SIZE_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _cluster_size() -> int:
  for name in CLUSTER_SIZE_ENV:
    if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 1:
      return int(os.environ[name])
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")   # a multi-host TPU slice
  return len(hosts.split(",")) if "," in hosts else 1


def initialize(mesh_cfg, coordinator: str = "", num_processes: int = 0,
               process_id: int = -1) -> int:
  """Joins the run's processes; returns their count (1: nothing to join).

  Explicit (local runs, any launcher): coordinator 'HOST:PORT', num_processes, process_id.
  Else a cluster launcher's environment (CLUSTER_SIZE_ENV, TPU_WORKER_HOSTNAMES) is detected
  by jax. mesh_cfg.init_timeout_s bounds the wait for every process to join;
  mesh_cfg.heartbeat_timeout_s how long a silent (dead) process goes unnoticed (both >= 1:
  defaults.validate, which main runs before joining).
  """
  explicit = bool(coordinator) or num_processes > 0 or process_id >= 0
  if explicit:
    if not coordinator or num_processes < 1 or process_id < 0:
      raise ConfigError("--coordinator=HOST:PORT, --num_processes=N and --process_id=I go "
                        f"together (got {coordinator!r}, {num_processes}, {process_id})")
    if process_id >= num_processes:
      raise ConfigError(f"--process_id={process_id} is not below --num_processes="
                        f"{num_processes} (processes are numbered 0..N-1)")
    if num_processes == 1:
      return 1
  elif _cluster_size() == 1:
    return 1
  if jax.distributed.is_initialized():
    return jax.process_count()
  # CPU devices of several processes talk through gloo (GPU and TPU have their own links).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=int(mesh_cfg.init_timeout_s),
                heartbeat_timeout_seconds=int(mesh_cfg.heartbeat_timeout_s))
  if explicit:
    kwargs.update(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  state = _state()   # (not jax.process_count(): that starts the devices)
  logging.info("process %d of %d joined (coordinator %s)", state.process_id,
               state.num_processes, state.coordinator_address)
  return state.num_processes


def count() -> int:
  return jax.process_count()


def index() -> int:
  return jax.process_index()


def is_primary() -> bool:
  return index() == 0


def _state():
  from jax._src import distributed   # pylint: disable=g-import-not-at-top (its key-value store)
  return distributed.global_state


def joined() -> int:
  """The processes joined so far (1 before initialize), without starting the devices (which
  jax.process_count() would, and that must wait for initialize)."""
  return getattr(_state(), "num_processes", None) or 1


# Barriers wait on the coordination service, not on a device collective: process 0 may make
# data for an hour while the others wait. The timeout is a backstop only; a dead process ends
# the run within mesh.heartbeat_timeout_s.
BARRIER_TIMEOUT_S = 24 * 3600
_barriers = itertools.count()


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op for one process). Every
  process passes the same barriers in the same order (each gets a fresh key)."""
  client = _state().client
  if client is not None:
    client.wait_at_barrier(f"vsr_jax/{next(_barriers)}/{name}", BARRIER_TIMEOUT_S * 1000)


def primary_first(fn, name: str):
  """fn() on process 0, then on the others once it has returned: for 'make it if it is
  missing, then read it' (generated data, config.json), which process 0 alone makes."""
  if count() == 1:
    return fn()
  out = fn() if is_primary() else None
  barrier(f"{name}: process 0 done")
  return out if is_primary() else fn()


def on_primary(fn, name: str):
  """fn() on process 0 only (writes of shared outputs); every process returns together."""
  out = fn() if is_primary() else None
  barrier(f"{name}: written")
  return out


def agree(config, workdir: str, mode: str, timeout_s: int) -> None:
  """Every process must run the same config on the same workdir, and count the same
  processes: each publishes a digest, each reads all others' (a clear error names the first
  process that differs, or the one that never published within timeout_s)."""
  state = _state()
  if state.client is None:
    return
  # The counts each process was started with (jax.process_count() would first start the
  # devices, which wait for every process the count names: a wrong count would hang there).
  n, me = state.num_processes, state.process_id
  from vsr_jax import config_lib   # pylint: disable=g-import-not-at-top
  mine = {"num_processes": n, "workdir": os.path.abspath(workdir), "mode": mode,
          "config": hashlib.sha1(json.dumps(config_lib.to_dict(config), sort_keys=True,
                                            default=str).encode()).hexdigest()}
  client = state.client
  client.key_value_set(f"vsr_jax/agree/{me}", json.dumps(mine))
  for other in range(n):
    try:
      theirs = json.loads(client.blocking_key_value_get(f"vsr_jax/agree/{other}",
                                                        int(timeout_s * 1000)))
    except Exception as e:   # pylint: disable=broad-except (a timeout of the key-value store)
      raise ConfigError(f"process {other} of {n} did not report its config within "
                        f"{timeout_s} s (mesh.init_timeout_s): {e}") from None
    differ = [k for k in mine if theirs[k] != mine[k]]
    if differ:
      raise ConfigError(
          f"process {other} differs from process {me} in "
          f"{', '.join(differ)} ({', '.join(f'{theirs[k]!r} vs {mine[k]!r}' for k in differ)}): "
          "every process of a run takes the same --config, overrides, --workdir, --mode and "
          "--num_processes")


# ------------------------------------------------------------------------ arrays

def _rows(sharding, shape) -> tuple[int, int] | None:
  """The contiguous rows [lo, hi) of a global [N, ...] array this process's devices hold,
  or None when they are not one block."""
  spans = sorted({(s[0].start or 0, shape[0] if s[0].stop is None else s[0].stop)
                  for s in sharding.addressable_devices_indices_map(shape).values()})
  lo, hi = spans[0][0], spans[0][1]
  for a, b in spans[1:]:
    if a > hi:
      return None
    hi = max(hi, b)
  return lo, hi


def put_rows(tree, sharding):
  """A host batch (leaves [N, ...], the same global batch on every process) -> global arrays
  split by `sharding`; each process places only the rows its own devices hold
  (jax.make_array_from_process_local_data)."""
  if count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    x = np.asarray(x)
    rows = _rows(sharding, x.shape) if x.ndim else None
    if rows is None:   # a scalar, or rows spread over the processes in another pattern
      return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
    return jax.make_array_from_process_local_data(sharding, x[rows[0]:rows[1]], x.shape)

  return jax.tree.map(one, tree)


def fetch(tree):
  """Global arrays -> host numpy (an array split over processes is gathered from them)."""
  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x
  return jax.device_get(jax.tree.map(one, tree))
