"""TFDS builder of TVR (TVRetrieval, ECCV 2020) for video corpus moment retrieval.

  tfds build tvr --imports vsr_jax.data.tfds.tvr --manual_dir DIR --data_dir OUT

A published row: {"vid_name": "friends_s01e03_seg02_clip_19", "duration": 61.46,
"ts": [16.48, 33.87], "desc": "...", "type": "v", "desc_id": 90200}; the query is `desc`.
Durations come from tvr_video2dur_idx.json ({split: {vid_name: [duration, index]}}), the
release's own index of the corpus; a row whose `duration` differs is counted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from vsr_jax.data import annotations
from vsr_jax.data.tfds import builder as builder_lib

CLIP_SECONDS = 1.5      # TVR's features: one row per 1.5 s clip


@dataclasses.dataclass(eq=False)
class TvrConfig(builder_lib.VcmrConfig):
  """TVR; video2dur: the release's {split: {vid_name: [duration, index]}} file."""
  video2dur: str = "tvr_video2dur_idx.json"

  def __post_init__(self):
    if not self.annotations:
      # test_public has no `ts` (its labels are not released): not a moment-retrieval split.
      self.annotations = (("train", "tvr_train_release.jsonl"), ("val", "tvr_val_release.jsonl"))


def _number(where, field, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise builder_lib.BuildError(f"{where}: field {field!r} must be a finite number, "
                                 f"got {value!r}")
  return float(value)


def parse_row(row, where: str, durations: dict, dur_path: str, counts) -> annotations.Moment:
  """Checks one decoded TVR row; corrections and notable facts are added to `counts`."""
  if not isinstance(row, dict):
    raise builder_lib.BuildError(f"{where}: expected a JSON object, got {type(row).__name__}")
  for field in ("vid_name", "ts", "desc", "desc_id"):
    if field not in row:
      raise builder_lib.BuildError(f"{where}: missing field {field!r} (row has {sorted(row)})")
  video, desc_id, desc = row["vid_name"], row["desc_id"], row["desc"]
  if not isinstance(video, str) or not video:
    raise builder_lib.BuildError(f"{where}: field 'vid_name' must be a non-empty string, "
                                 f"got {video!r}")
  if isinstance(desc_id, bool) or not isinstance(desc_id, int):
    raise builder_lib.BuildError(f"{where}: field 'desc_id' must be an integer, got {desc_id!r}")
  if not isinstance(desc, str) or not desc.strip():
    raise builder_lib.BuildError(f"{where}: empty query (field 'desc' is {desc!r})")
  if video not in durations:
    raise builder_lib.BuildError(f"{where}: video {video!r} is not in {dur_path} (no key "
                                 f"{video!r} in this split)")
  duration = durations[video]
  if "duration" in row and _number(where, "duration", row["duration"]) != duration:
    counts["row_duration_differs_from_video2dur"] += 1
  ts = row["ts"]
  if not isinstance(ts, (list, tuple)) or len(ts) != 2:
    raise builder_lib.BuildError(f"{where}: field 'ts' must be [start, end], got {ts!r}")
  start, end = (_number(where, "ts", t) for t in ts)
  if start > end:
    raise builder_lib.BuildError(f"{where}: field 'ts' is reversed: start {start} > end {end}")
  start, end = annotations.clip_to_video(start, end, duration, desc_id, video, counts)
  # Facts of the real files worth knowing when reading the grounding metrics (no correction).
  if start == 0:
    counts["moments_starting_at_0"] += 1
  if end - start < CLIP_SECONDS:
    counts["moments_shorter_than_one_clip"] += 1
  return annotations.Moment(desc_id, video, start, end, duration, desc.strip(), "")


def read_video2dur(path: str, split: str) -> dict:
  """{vid_name: duration} of one split of tvr_video2dur_idx.json, checked."""
  if not os.path.isfile(path):
    raise builder_lib.BuildError(f"missing {path} (TVR's video -> duration index; see the "
                                 "MANUAL_DOWNLOAD_INSTRUCTIONS)")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise builder_lib.BuildError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(raw, dict) or split not in raw or not isinstance(raw[split], dict):
    raise builder_lib.BuildError(f"{path}: no key {split!r} (split -> {{vid_name: "
                                 "[duration, index]}})")
  out = {}
  for video, value in raw[split].items():
    where = f"{path}: key {split!r} / {video!r}"
    if not isinstance(value, (list, tuple)) or not value:
      raise builder_lib.BuildError(f"{where}: expected [duration, index], got {value!r}")
    out[video] = _number(where, "duration", value[0])
    if out[video] <= 0:
      raise builder_lib.BuildError(f"{where}: duration must be > 0, got {out[video]}")
  return out


def read_tvr(path: str, durations: dict, dur_path: str):
  """Reads a TVR annotation file -> (moments in file order, Counter of corrections)."""
  return annotations.read_moments(
      path, lambda row, where, counts: parse_row(row, where, durations, dur_path, counts),
      error=builder_lib.BuildError)


class Tvr(builder_lib.VcmrBuilder):
  """TVR video corpus moment retrieval: one example per video with its features (1.5 s
  clips) and queries (query = desc)."""

  name = "tvr"
  BUILDER_CONFIGS = [TvrConfig(name="default", fps=1 / CLIP_SECONDS,
                               video_features="video_features.h5",
                               description="TVR train and val (test_public has no labels)")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put into the manual_dir (--manual_dir, or data.manual_dir), from github.com/jayleicn/TVRetrieval:
    tvr_train_release.jsonl, tvr_val_release.jsonl   data/ (unmodified; splits whose file is
                                                     absent are not built)
    tvr_video2dur_idx.json                           data/ (the video -> duration index)
    video_features.h5   an HDF5 file keyed by vid_name, float32 [clips, feature_dim], one row
                        per 1.5 s clip (e.g. the release's tvr_i3d_rgb600_avg_cl-1.5.h5; set
                        config field video_features to its name, feature_dim to its width),
      or a directory of <vid_name>.npy files instead (video_features = the directory).
    optional: query features, an HDF5 file keyed by str(desc_id), [L, query_feature_dim]
      (e.g. the release's query-only RoBERTa features; config fields query_features,
      query_feature_dim).
  End times beyond the duration are clipped and counted; moments that start at or after
  their video's end (or have no length once clipped) are dropped, counted and named in the
  build log and metadata['dropped']; videos without features fail the build unless
  allow_missing_videos is set.
  """

  def read_split(self, manual_dir, split, path):
    dur_path = os.path.join(manual_dir, self.builder_config.video2dur)
    return read_tvr(path, read_video2dur(dur_path, split), dur_path)
