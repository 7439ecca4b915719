"""What the VCMR TFDS builders share: the config, the example layout, the feature readers.

One example is one video of a split: its pre-extracted features and every query annotated on
it (the corpus of a split is all of its videos, so no video is stored twice):

  video     str         the dataset's video id
  duration  float32     seconds
  features  [T, D]      float32, T rows at `fps` rows per second (TVR: one row per 1.5 s clip)
  queries   sequence of {desc_id int64, query str, coarse str, start float32, end float32,
                         row int32 (0-based position in the split's annotation file)}
Times are float32, as everywhere in the project: TFDS serialises floats as 32-bit values
(a float64 feature would come back rounded all the same).
  query_features [sum L, Dq] float32, only with query features: the queries' [L, Dq]
            arrays, concatenated in `queries` order; queries/query_len holds each L.

Built with file_format='array_record' and read with `builder.as_data_source()` (random
access, NumPy, no TensorFlow). TFDS writes into an `incomplete.*` directory and renames it to
<data_dir>/<name>/<config>/<version> only after the last split and dataset_info.json are
written; an exception in the middle removes it, so a failed build leaves nothing a reader
would take as a dataset (tests/test_tfds_builder.py checks both).

The build log (absl logging, and `info.metadata['build']`) names every correction: end times
clipped to the duration, videos without features (an error unless `allow_missing_videos`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vsr_jax import config_lib
from vsr_jax.data import store

VERSION = tfds.core.Version("1.0.0")
SHOW_MISSING = 20      # missing videos named in an error or the log (all are counted)


class BuildError(config_lib.InputError):
  """Published files that cannot be built into a dataset; the message names the file."""


@dataclasses.dataclass(eq=False)
class VcmrConfig(tfds.core.BuilderConfig):
  """Which files, and how to read them (all paths relative to the manual_dir).

  annotations: ((split, file name), ...); a split whose file is absent is not built.
  fps: feature rows per second (1 / clip seconds: TVR's 1.5 s clips are fps = 1 / 1.5).
  video_features: a directory of <video>.npy files, or an HDF5 file keyed by video id.
  query_features: '' or an HDF5 file keyed by str(desc_id) ([L, query_feature_dim] each).
  allow_missing_videos: drop videos without features (named and counted) instead of failing.
  """
  annotations: tuple = ()
  fps: float = 1.0
  feature_dim: int = 256
  video_features: str = "features"
  query_features: str = ""
  query_feature_dim: int = 0
  allow_missing_videos: bool = False

  def settings(self) -> dict:
    """Everything the built bytes depend on (stored with the dataset, checked on reuse)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in ("name", "version", "release_notes", "supported_versions",
                             "description", "tags")}
    out["annotations"] = [list(pair) for pair in self.annotations]
    return out


# ---------------------------------------------------------------------- feature readers

def _check(array, where: str, dim: int) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim != 2 or array.shape[1] != dim or array.shape[0] == 0:
    raise BuildError(f"{where}: features of shape {array.shape}, expected [rows > 0, {dim}]")
  bad = ~np.isfinite(array)
  if bad.any():
    raise BuildError(f"{where}: {int(bad.sum())} non-finite values (first in row "
                     f"{int(np.argwhere(bad)[0][0])})")
  return array.astype(np.float32, copy=False)


class NpyDir:
  """<dir>/<key>.npy, one [rows, dim] array each."""

  def __init__(self, path: str, dim: int):
    self.path, self.dim = path, dim

  def has(self, key: str) -> bool:
    return os.path.isfile(os.path.join(self.path, key + ".npy"))

  def __getitem__(self, key: str) -> np.ndarray:
    try:
      return store.load_features(os.path.join(self.path, key + ".npy"), self.dim)
    except store.DatasetError as e:
      raise BuildError(str(e)) from None

  def close(self):
    pass


class Hdf5File:
  """One HDF5 file keyed by id (TVR's layout), one [rows, dim] dataset per key."""

  def __init__(self, path: str, dim: int):
    import h5py
    self.path, self.dim = path, dim
    try:
      self._file = h5py.File(path, "r")
    except OSError as e:
      raise BuildError(f"{path}: unreadable HDF5 file ({e})") from None

  def has(self, key: str) -> bool:
    return key in self._file

  def __getitem__(self, key: str) -> np.ndarray:
    try:
      node = self._file[key]
    except KeyError:      # (a membership test first would double h5py's lookup cost)
      raise BuildError(f"{self.path}: no key {key!r}") from None
    where = f"{self.path}, key {key!r}"
    try:
      data = node[()]
    except (TypeError, AttributeError, OSError) as e:   # a group, not an array
      raise BuildError(f"{where}: not a readable array ({e})") from None
    return _check(data, where, self.dim)

  def close(self):
    self._file.close()


def open_features(manual_dir: str, relative: str, dim: int, what: str):
  """A directory of .npy files, or an HDF5 file; which one is decided by what is there."""
  path = os.path.join(manual_dir, relative)
  if os.path.isdir(path):
    return NpyDir(path, dim)
  if os.path.isfile(path):
    return Hdf5File(path, dim)
  raise BuildError(f"{what}: {path} does not exist (a directory of <id>.npy files or an HDF5 "
                   "file; see the MANUAL_DOWNLOAD_INSTRUCTIONS)")


# ------------------------------------------------------------------------- the builder

class VcmrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the VCMR builders: subclasses say how a split's annotation file is read."""

  VERSION = VERSION

  def __init__(self, *, file_format=None, **kwargs):
    # TFDS makes an empty temporary folder for every builder of a dataset not yet built (its
    # GCS metadata lookup, disabled) and never removes it: one per run piled up in /tmp. Those
    # go into a folder of ours, removed here.
    with tempfile.TemporaryDirectory(prefix="vsr_jax_tfds_") as scratch:
      saved, tempfile.tempdir = tempfile.tempdir, scratch
      try:
        # array_record: random access, and no TensorFlow needed to write or read it.
        super().__init__(file_format=file_format or "array_record", **kwargs)
      finally:
        tempfile.tempdir = saved

  def read_split(self, manual_dir: str, split: str, path: str):
    """-> (moments [annotations.Moment] in file order, collections.Counter of corrections)."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    query = {"desc_id": np.int64, "query": tfds.features.Text(), "coarse": tfds.features.Text(),
             "start": np.float32, "end": np.float32, "row": np.int32}
    features = {"video": tfds.features.Text(), "duration": np.float32,
                "features": tfds.features.Tensor(shape=(None, c.feature_dim), dtype=np.float32)}
    if c.query_feature_dim:
      query["query_len"] = np.int32
      features["query_features"] = tfds.features.Tensor(shape=(None, c.query_feature_dim),
                                                        dtype=np.float32)
    features["queries"] = tfds.features.Sequence(query)
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(settings=c.settings()))

  def _split_generators(self, dl_manager):
    c = self.builder_config
    manual = os.fspath(dl_manager.manual_dir)
    if not os.path.isdir(manual):
      raise BuildError(f"manual_dir {manual} does not exist.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    present = [(s, f) for s, f in c.annotations if os.path.isfile(os.path.join(manual, f))]
    if not present:
      raise BuildError(f"{manual} holds none of the annotation files "
                       f"{', '.join(f for _, f in c.annotations)}.\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    videos = open_features(manual, c.video_features, c.feature_dim, "video features")
    queries = (open_features(manual, c.query_features, c.query_feature_dim, "query features")
               if c.query_features else None)
    self.info.metadata["build"] = {}
    self.info.metadata["dropped"] = {}
    generators = {}
    # Every split is read and checked before anything is written: a bad row or a missing
    # video fails the build at once.
    for split, name in present:
      path = os.path.join(manual, name)
      moments, counts = self.read_split(manual, split, path)
      durations = {}
      for m in moments:
        if durations.setdefault(m.video, m.duration) != m.duration:
          counts["videos_with_inconsistent_duration"] += 1   # the first row's is kept
      rows = self._drop_missing(list(enumerate(moments)), counts, videos, path)
      for what, n in sorted(counts.items()):
        logging.info("build %s/%s %s: %s: %d", self.name, c.name, split,
                     what.replace("_", " "), n)
      self.info.metadata["build"][split] = dict(counts)
      # The rows dropped as no moment of their video, named ('desc_id video reason').
      self.info.metadata["dropped"][split] = list(getattr(counts, "dropped", []))
      generators[split] = self._generate_examples(rows, videos, queries)
    return generators

  def _drop_missing(self, rows, counts, videos, path):
    """rows: [(row, Moment)]; those of videos without features are dropped or an error."""
    names = list(dict.fromkeys(m.video for _, m in rows))
    missing = [v for v in names if not videos.has(v)]
    if not missing:
      return rows
    shown = ", ".join(missing[:SHOW_MISSING]) + (" ..." if len(missing) > SHOW_MISSING else "")
    if not self.builder_config.allow_missing_videos:
      raise BuildError(
          f"{path}: {len(missing)} of {len(names)} videos have no features in "
          f"{videos.path}: {shown}. Add them, or set allow_missing_videos "
          "(data.tfds.allow_missing_videos=True) to drop them and their queries")
    gone = set(missing)
    kept = [(r, m) for r, m in rows if m.video not in gone]
    counts["videos_without_features_dropped"] = len(missing)
    counts["queries_dropped_with_their_video"] = len(rows) - len(kept)
    logging.warning("%s: dropped %d videos without features in %s (and their %d queries): %s",
                    path, len(missing), videos.path, len(rows) - len(kept), shown)
    if not kept:
      raise BuildError(f"{path}: no video of the split has features in {videos.path}")
    return kept

  def _generate_examples(self, rows, videos, queries):
    by_video = collections.defaultdict(list)
    for row, m in rows:
      by_video[m.video].append((row, m))
    for video, items in by_video.items():
      example = {
          "video": video, "duration": items[0][1].duration, "features": videos[video],
          "queries": [{"desc_id": m.desc_id, "query": m.query, "coarse": m.coarse,
                       "start": m.start, "end": m.end, "row": row} for row, m in items]}
      if queries is not None:
        arrays = [queries[str(m.desc_id)] for _, m in items]
        for q, a in zip(example["queries"], arrays):
          q["query_len"] = len(a)
        example["query_features"] = np.concatenate(arrays)
      yield video, example
