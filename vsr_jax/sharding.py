"""Device mesh and shardings. One axis, 'data': batches, GRPO groups and (optionally) the
exact index's corpus are split along it; parameters are replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vsr_jax.config_lib import ConfigError

DATA = "data"


def make_mesh(mesh_cfg) -> Mesh:
  devices = jax.devices()
  n = len(devices) if mesh_cfg.data == -1 else mesh_cfg.data
  if n > len(devices):
    raise ConfigError(f"config.mesh.data={n}, but only {len(devices)} devices are visible "
                      "(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N)")
  return Mesh(np.array(devices[:n]), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over 'data'."""
  return NamedSharding(mesh, P(DATA))
