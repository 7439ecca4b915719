"""TFDS builder of the VERIFIED fine-grained VCMR benchmarks: Charades-FIG, DiDeMo-FIG and
ActivityNet-FIG (one BuilderConfig each).

  tfds build verified_fig/charades --imports vsr_jax.data.tfds.verified \\
      --manual_dir DIR --data_dir OUT
  # other features (TFDS wants a new name for changed settings):
  #   --config '{"name": "charades-i3d", "feature_dim": 1024, "fps": 0.5}'

or through the project: data.source='tfds', data.tfds.name='verified_fig/charades',
data.manual_dir=DIR (the main command builds the dataset when it is missing).
"""

from __future__ import annotations

import dataclasses

from vsr_jax.data import annotations
from vsr_jax.data.tfds import builder as builder_lib

# config name -> the published annotation files per split (VERIFIED's fine-grained-anno/).
# ActivityNet-FIG's test split is ActivityNet Captions' val_2.
FILES = {
    "charades": (("train", "charades_fig_train.jsonl"), ("test", "charades_fig_test.jsonl")),
    "didemo": (("train", "didemo_fig_train.jsonl"), ("val", "didemo_fig_val.jsonl"),
               ("test", "didemo_fig_test.jsonl")),
    "activitynet": (("train", "activitynet_fig_train.jsonl"),
                    ("val", "activitynet_fig_val_1.jsonl"),
                    ("test", "activitynet_fig_val_2.jsonl")),
}


@dataclasses.dataclass(eq=False)
class VerifiedConfig(builder_lib.VcmrConfig):
  """A VERIFIED benchmark; `annotations` defaults to the published file names of the
  benchmark the name starts with ('charades', or a custom 'charades-i3d')."""

  def __post_init__(self):
    if not self.annotations:
      benchmark = self.name.split("-")[0]
      if benchmark not in FILES:
        raise builder_lib.BuildError(
            f"unknown VERIFIED config {self.name!r} (names start with one of "
            f"{', '.join(FILES)}); or list the annotation files")
      self.annotations = FILES[benchmark]


class VerifiedFig(builder_lib.VcmrBuilder):
  """VERIFIED fine-grained VCMR (Charades-FIG, DiDeMo-FIG, ActivityNet-FIG): one example per
  video with its features and queries (query = fig_desc, coarse = cog_desc)."""

  name = "verified_fig"
  BUILDER_CONFIGS = [
      VerifiedConfig(name="charades", description="Charades-FIG (3,720 test queries)"),
      VerifiedConfig(name="didemo", description="DiDeMo-FIG (4,013 test queries)"),
      VerifiedConfig(name="activitynet", description="ActivityNet-FIG (test = val_2)"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put into the manual_dir (--manual_dir, or data.manual_dir):
    <benchmark>_fig_<split>.jsonl   VERIFIED's annotation files (github.com/hlchen23/VERIFIED,
                                    fine-grained-anno/) under these names, unmodified:
        charades:    charades_fig_train.jsonl, charades_fig_test.jsonl
        didemo:      didemo_fig_train.jsonl, didemo_fig_val.jsonl, didemo_fig_test.jsonl
        activitynet: activitynet_fig_train.jsonl, activitynet_fig_val_1.jsonl,
                     activitynet_fig_val_2.jsonl (the test split)
                     Splits whose file is absent are not built; at least one must be there.
    features/<video>.npy            pre-extracted features of every video the files name:
                                    float32 [rows, feature_dim] at `fps` rows per second
                                    (config fields feature_dim, fps; default 256-d at 1 fps),
      or an HDF5 file keyed by video id instead (config field video_features = its name).
    optional: an HDF5 file of query features keyed by str(desc_id), [L, query_feature_dim]
      (config fields query_features, query_feature_dim).
  Rows with an end time beyond the video's duration are clipped and counted; moments that
  start at or after their video's end (the published training files hold one) or have no
  length once clipped are dropped, counted and named (build log, metadata['dropped']); videos
  without features fail the build unless allow_missing_videos is set (then they are named,
  counted and dropped with their queries).
  """

  def read_split(self, manual_dir, split, path):
    del manual_dir, split
    try:
      return annotations.read_verified(path)
    except annotations.AnnotationError as e:
      raise builder_lib.BuildError(str(e)) from None
