"""Tests for vsr_jax.data.tfds.builder: feature readers, missing videos, and that a build that
fails (or is killed) in the middle leaves nothing a reader takes as a dataset."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

import real_data
from vsr_jax.data.tfds import builder as builder_lib
from vsr_jax.data.tfds import verified

DIM = 8
ROWS = [{"video": f"VID{i}", "time": [1.0, 4.0 + i], "desc_id": 100 + i, "duration": 10.0 + i,
         "cog_desc": "a person opens a door", "fig_desc": f"A person in red opens door {i}."}
        for i in range(6)]


def manual_dir(tmp_path, rows=ROWS):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "charades_fig_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  real_data.write_npy_features(manual / "features", {r["video"]: r["duration"] for r in rows},
                               DIM)
  return manual


def builder(data_dir, **fields):
  config = verified.VerifiedConfig(name="charades-b", feature_dim=DIM, **fields)
  return verified.VerifiedFig(config=config, data_dir=str(data_dir))


def prepare(b, manual):
  tfds.disable_progress_bar()
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def assert_no_dataset(data_dir):
  """Nothing a reader would take as the dataset: no version dir, a fresh builder agrees."""
  assert not list(data_dir.glob("verified_fig/charades-b/1.0.0"))
  assert not builder(data_dir).is_prepared()


# ------------------------------------------------------------------------ readers

def test_npy_reader_errors_name_the_file(tmp_path):
  np.save(tmp_path / "wide.npy", np.zeros((3, DIM + 1), np.float32))
  bad = np.zeros((4, DIM), np.float32)
  bad[2, 1] = np.inf
  np.save(tmp_path / "inf.npy", bad)
  reader = builder_lib.open_features(str(tmp_path), ".", DIM, "video features")
  assert isinstance(reader, builder_lib.NpyDir)
  with pytest.raises(builder_lib.BuildError, match=r"wide.npy: features of shape \(3, 9\)"):
    reader["wide"]
  with pytest.raises(builder_lib.BuildError, match="inf.npy: 1 non-finite"):
    reader["inf"]
  assert not reader.has("absent")


def test_hdf5_reader_errors_name_file_and_key(tmp_path):
  bad = np.zeros((4, DIM), np.float32)
  bad[3, 0] = np.nan
  real_data.write_h5(tmp_path / "f.h5", {"ok": np.ones((2, DIM), np.float32), "nan": bad,
                                        "flat": np.ones(DIM, np.float32)})
  reader = builder_lib.open_features(str(tmp_path), "f.h5", DIM, "video features")
  np.testing.assert_array_equal(reader["ok"], np.ones((2, DIM)))
  with pytest.raises(builder_lib.BuildError, match="f.h5: no key 'gone'"):
    reader["gone"]
  with pytest.raises(builder_lib.BuildError, match="f.h5, key 'nan': 1 non-finite values "
                                                   r"\(first in row 3\)"):
    reader["nan"]
  with pytest.raises(builder_lib.BuildError, match=r"f.h5, key 'flat': features of shape"):
    reader["flat"]
  reader.close()


def test_missing_feature_path(tmp_path):
  with pytest.raises(builder_lib.BuildError, match="video features: .*nowhere does not exist"):
    builder_lib.open_features(str(tmp_path), "nowhere", DIM, "video features")


# ---------------------------------------------------------------------- the build

def test_a_builder_of_an_unbuilt_dataset_leaves_no_temporary_folder(tmp_path, monkeypatch):
  """TFDS's GCS lookup (disabled) makes an empty temporary folder per builder and keeps it."""
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  b = builder(tmp_path / "data")
  assert not b.is_prepared()
  assert not os.listdir(scratch)
  assert tempfile.gettempdir() == str(scratch)          # restored


def test_example_layout_and_build_log(tmp_path):
  b = builder(tmp_path / "data")
  prepare(b, manual_dir(tmp_path))
  ds = b.as_data_source(split="test")
  assert len(ds) == len(ROWS)
  ex = {ds[i]["video"].decode(): ds[i] for i in range(len(ds))}["VID2"]
  assert ex["features"].shape == (12, DIM) and ex["features"].dtype == np.float32
  assert list(ex["queries"]["desc_id"]) == [102] and list(ex["queries"]["row"]) == [2]
  assert b.info.metadata["build"]["test"] == {"rows": 6}
  assert b.info.metadata["settings"] == b.builder_config.settings()
  assert b.info.file_format.value == "array_record"


def test_a_moment_after_its_video_end_is_dropped_not_a_failed_build(tmp_path):
  """(The published VERIFIED training files hold such a row.)"""
  rows = [dict(r) for r in ROWS]
  rows[3]["time"] = [rows[3]["duration"] + 1.0, rows[3]["duration"] + 2.0]
  b = builder(tmp_path / "data")
  prepare(b, manual_dir(tmp_path, rows))
  assert b.info.metadata["build"]["test"] == {
      "rows": 5, "moments_dropped_starts_at_or_after_the_end": 1}
  assert list(b.info.metadata["dropped"]["test"]) == ["103 VID3 starts_at_or_after_the_end"]
  ds = b.as_data_source(split="test")
  assert sorted(ds[i]["video"].decode() for i in range(len(ds))) == [
      "VID0", "VID1", "VID2", "VID4", "VID5"]


def test_videos_without_features_fail_unless_allowed(tmp_path):
  manual = manual_dir(tmp_path)
  os.remove(manual / "features" / "VID1.npy")
  os.remove(manual / "features" / "VID4.npy")
  with pytest.raises(builder_lib.BuildError, match="2 of 6 videos have no features") as err:
    prepare(builder(tmp_path / "data"), manual)
  assert "VID1, VID4" in str(err.value) and "charades_fig_test.jsonl" in str(err.value)
  assert_no_dataset(tmp_path / "data")
  b = builder(tmp_path / "data", allow_missing_videos=True)
  prepare(b, manual)
  assert b.info.metadata["build"]["test"]["videos_without_features_dropped"] == 2
  assert b.info.metadata["build"]["test"]["queries_dropped_with_their_video"] == 2
  ds = b.as_data_source(split="test")
  # Rows keep their position in the file.
  assert sorted(int(ds[i]["queries"]["row"][0]) for i in range(len(ds))) == [0, 2, 3, 5]


def test_failure_in_the_middle_leaves_nothing(tmp_path):
  manual = manual_dir(tmp_path)
  bad = real_data.features_of("VID3", 13, DIM)
  bad[5, 2] = np.nan
  np.save(manual / "features" / "VID3.npy", bad)       # met during generation
  with pytest.raises(builder_lib.BuildError, match="VID3.npy: 1 non-finite"):
    prepare(builder(tmp_path / "data"), manual)
  assert_no_dataset(tmp_path / "data")
  assert not list((tmp_path / "data").rglob("incomplete*"))     # TFDS cleaned its temp dir
  with pytest.raises(Exception):
    builder(tmp_path / "data").as_data_source(split="test")
  real_data.write_npy_features(manual / "features", {"VID3": 13.0}, DIM)
  b = builder(tmp_path / "data")
  prepare(b, manual)                                 # a later build succeeds
  assert len(b.as_data_source(split="test")) == len(ROWS)


def test_killed_build_leaves_nothing_a_reader_takes(tmp_path):
  manual = manual_dir(tmp_path)
  data_dir = tmp_path / "data"
  # A process that dies (no exception handling runs) while writing the third example.
  script = textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {os.path.dirname(__file__)!r})
      import test_tfds_builder as t
      from vsr_jax.data.tfds import builder as builder_lib
      calls = []
      original = builder_lib.NpyDir.__getitem__
      def dying(self, key):
          calls.append(key)
          if len(calls) == 3:
              os._exit(9)
          return original(self, key)
      builder_lib.NpyDir.__getitem__ = dying
      import pathlib
      t.prepare(t.builder(pathlib.Path({str(data_dir)!r})), {str(manual)!r})
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 9, proc.stderr[-2000:]
  assert list(data_dir.rglob("incomplete*"))         # it did die in the middle
  assert_no_dataset(data_dir)
  b = builder(data_dir)
  prepare(b, manual)                                 # the leftover does not block a build
  assert len(b.as_data_source(split="test")) == len(ROWS)


def test_settings_are_what_the_bytes_depend_on():
  s = verified.VerifiedConfig(name="charades-x", feature_dim=16, fps=0.5).settings()
  assert s["feature_dim"] == 16 and s["fps"] == 0.5
  assert s["annotations"][1] == ["test", "charades_fig_test.jsonl"]
  assert "description" not in s and "name" not in s
