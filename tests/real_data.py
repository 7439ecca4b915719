"""Helpers for tests on the real annotation files (../shared/data/, never copied into the
repo) and the deterministic features they need. Not a test module."""

import json
import math
import os
import zlib

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
CHARADES = os.path.join(SHARED, "verified", "charades_fig_test.jsonl")
DIDEMO = os.path.join(SHARED, "verified", "didemo_fig_test.jsonl")
TVR_VAL = os.path.join(SHARED, "tvr", "tvr_val_release.jsonl")
TVR_DUR = os.path.join(SHARED, "tvr", "tvr_video2dur_idx.json")


def require(*paths):
  """Skips the test (with the reason) when a real file is absent."""
  for path in paths:
    if not os.path.isfile(path):
      pytest.skip(f"real annotation file {os.path.normpath(path)} is absent")


def rows(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def link(path, manual_dir, name=None):
  """Puts a real file into a manual_dir by symlink (no copy)."""
  os.makedirs(manual_dir, exist_ok=True)
  os.symlink(os.path.abspath(path), os.path.join(manual_dir, name or os.path.basename(path)))


def features_of(key, rows_, dim):
  """Deterministic [rows_, dim] features of one id (independent of order and of other ids)."""
  rng = np.random.default_rng(zlib.crc32(key.encode()))
  return rng.standard_normal((rows_, dim)).astype(np.float32)


def num_rows(duration, fps):
  return max(1, math.ceil(duration * fps))


def write_npy_features(directory, durations, dim, fps=1.0):
  os.makedirs(directory, exist_ok=True)
  for video, duration in durations.items():
    if not isinstance(duration, (int, float)):
      duration = 1.0          # a bad row's: the build must fail on the row, not here
    np.save(os.path.join(directory, video + ".npy"),
            features_of(video, num_rows(duration, fps), dim))


def write_h5(path, arrays):
  import h5py
  with h5py.File(path, "w") as f:
    for key, value in arrays.items():
      f.create_dataset(key, data=value)
