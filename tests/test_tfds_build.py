"""Tests for vsr_jax.data.tfds.build: TFDS's `build` command without TensorFlow."""

import json
import subprocess
import sys

import real_data

TINY = json.dumps({"name": "charades-tiny", "feature_dim": 4})


def test_build_command_writes_an_array_record_dataset(tmp_path):
  real_data.require(real_data.CHARADES)
  rows = real_data.rows(real_data.CHARADES)[:12]
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "charades_fig_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  real_data.write_npy_features(manual / "features", {r["video"]: r["duration"] for r in rows}, 4)
  proc = subprocess.run(
      [sys.executable, "-m", "vsr_jax.data.tfds.build", "verified_fig", "--config", TINY,
       "--manual_dir", str(manual), "--data_dir", str(tmp_path / "out")],
      capture_output=True, text=True, timeout=120, cwd=real_data.REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  version = tmp_path / "out" / "verified_fig" / "charades-tiny" / "1.0.0"
  assert (version / "dataset_info.json").is_file()
  assert list(version.glob("verified_fig-test.array_record-*"))
  # Readable by the project, without TensorFlow.
  code = ("import sys; import tensorflow_datasets as tfds; "
          f"b = tfds.builder_from_directory({str(version)!r}); "
          "print(len(b.as_data_source(split='test')), 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=real_data.REPO)
  assert out.stdout.split()[-2:] == [str(len({r["video"] for r in rows})), "False"], out.stderr


def test_build_command_names_a_missing_manual_dir(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "vsr_jax.data.tfds.build", "verified_fig", "--config", TINY,
       "--manual_dir", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path / "out")],
      capture_output=True, text=True, timeout=120, cwd=real_data.REPO)
  assert proc.returncode != 0
  assert "nowhere does not exist" in proc.stderr
  assert not list((tmp_path / "out").rglob("dataset_info.json"))
