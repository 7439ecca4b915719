"""Device mesh and shardings. Three named axes from config.mesh:

  data    queries, batches and GRPO groups are split along it
  corpus  the corpus is split along it: the index's vectors and the frame store (each device
          holds 1/|corpus| of the videos); a search is a per-shard top-k and a merge, a
          retrieved video's frames are gathered from its shard inside the jitted episode
  model   parameters (and optimizer state) split along it when mesh.params = 'fsdp'

The axes' product must be the number of devices; one axis may be -1 (the devices left).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vsr_jax.config_lib import ConfigError

DATA, CORPUS, MODEL = "data", "corpus", "model"
AXES = (DATA, CORPUS, MODEL)
# Batch fields split along 'data' (each must divide by its size).
BATCH_FIELDS = ("engine.train.batch_size", "sft.batch_size", "grpo.batch_size",
                "eval.batch_size")


def axis_sizes(mesh_cfg, num_devices: int) -> dict:
  """{axis: size} from config.mesh for `num_devices` devices (-1 filled), checked."""
  sizes = {a: int(mesh_cfg[a]) for a in AXES}
  fill = [a for a in AXES if sizes[a] == -1]
  if len(fill) > 1:
    raise ConfigError(f"config.mesh: only one axis may be -1 (the devices left), got "
                      f"{', '.join('mesh.' + a for a in fill)}")
  bad = [a for a in AXES if sizes[a] == 0 or sizes[a] < -1]
  if bad:
    raise ConfigError(f"config.mesh.{bad[0]}={sizes[bad[0]]}: expected >= 1 or -1")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ConfigError(
          f"config.mesh: the fixed axes ({_text(sizes)}) multiply to {known}, which does not "
          f"divide the {num_devices} devices visible")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(
        f"config.mesh: {_text(sizes)} multiply to {math.prod(sizes.values())}, but "
        f"{num_devices} devices are visible; the product must be the device count (set one "
        "axis to -1 for the devices left; on CPU, XLA_FLAGS="
        "--xla_force_host_platform_device_count=N gives N)")
  return sizes


def _text(sizes: dict) -> str:
  return " x ".join(f"{a}={sizes[a]}" for a in AXES)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (data, corpus, model) mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = axis_sizes(mesh_cfg, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  try:   # a layout that keeps each axis on fast links where the platform knows them
    from jax.experimental import mesh_utils   # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:   # pylint: disable=broad-except (CPU / unknown topologies)
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, AXES)


def size(mesh: Mesh | None, axis: str) -> int:
  return 1 if mesh is None else mesh.shape.get(axis, 1)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over 'data' (replicated over 'corpus' and 'model')."""
  return NamedSharding(mesh, P(DATA))


def corpus_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (video) axis split over 'corpus'."""
  return NamedSharding(mesh, P(CORPUS))


def rows_spec(n: int, mesh: Mesh) -> P:
  """P('data') for n rows that split evenly over 'data', else P() (inside shard_map)."""
  d = size(mesh, DATA)
  return P(DATA) if d > 1 and n % d == 0 else P()


def check_batch_sizes(config, mesh: Mesh, fields=BATCH_FIELDS) -> None:
  """Every batch split along 'data' must divide evenly over that axis."""
  d = size(mesh, DATA)
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if value % d:
      raise ConfigError(f"config.{field}={value} must be divisible by the mesh's data axis "
                        f"({d} devices, config.mesh.data)")


def check_corpus(mesh: Mesh | None, num_videos: int, what: str) -> None:
  """A corpus axis cannot have more shards than the corpus has videos."""
  c = size(mesh, CORPUS)
  if c > num_videos:
    raise ConfigError(f"config.mesh.corpus={c} is larger than the {what} corpus "
                      f"({num_videos} videos): every shard must hold at least one video")


def pad_rows(array, multiple: int):
  """Pads the leading axis with zero rows to a multiple of `multiple`."""
  pad = (-array.shape[0]) % multiple
  if not pad:
    return array
  widths = [(0, pad)] + [(0, 0)] * (array.ndim - 1)
  return np.pad(np.asarray(array), widths) if isinstance(array, np.ndarray) else \
      jax.numpy.pad(array, widths)


def put_corpus(array, mesh: Mesh | None):
  """[V, ...] on the mesh split over 'corpus' (padded to a multiple of its size), or as it is
  on one device when there is no corpus axis."""
  c = size(mesh, CORPUS)
  if c == 1:
    return jax.numpy.asarray(array) if mesh is None else jax.device_put(array, replicated(mesh))
  return jax.device_put(pad_rows(array, c), corpus_sharded(mesh))


# ------------------------------------------------------------------------ parameters

PARAM_RULES = ("replicated", "fsdp")
# Where an evaluation episode's frame store lives (config.eval.frame_store): "device" (on the
# mesh, split over 'corpus') or "host" (rollout.HostFrames: only the retrieved videos' frames
# are read, from host memory or a memory-mapped file).
FRAME_STORES = ("device", "host")


def param_spec(shape, mesh: Mesh, rule: str, min_size: int = 2 ** 12) -> P:
  """'replicated': P(); 'fsdp': the leaf's largest dimension that divides over 'model' is
  split along it (leaves under min_size elements stay replicated: not worth a collective)."""
  m = size(mesh, MODEL)
  if rule == "replicated" or m == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in dims:
    if shape[i] % m == 0:
      return P(*([None] * i + [MODEL]))
  return P()


def param_shardings(tree, mesh: Mesh, rule: str):
  """A NamedSharding per leaf of `tree` (arrays, ShapeDtypeStructs or Python scalars such as
  a train state's step) under `rule`."""
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), mesh, rule)), tree)
