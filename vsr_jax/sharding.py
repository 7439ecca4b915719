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


def check_batch_sizes(config, mesh: Mesh) -> None:
  """Every batch split along 'data' must divide evenly over the mesh's devices."""
  for field in ("engine.train.batch_size", "sft.batch_size", "grpo.batch_size",
                "eval.batch_size"):
    value = config
    for part in field.split("."):
      value = value[part]
    if value % mesh.size:
      raise ConfigError(f"config.{field}={value} must be divisible by the {mesh.size} devices "
                        "of the mesh (config.mesh.data)")
