"""Tests for experiments/soak.py: its helpers (the output comparison, the checkpoint damage)
and a 3-kill soak of the smoke run, end to end."""
import importlib.util
import os

import numpy as np
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
  """The script as a module, its absl flags (--workdir, --config, ... as vsr_jax.main and
  vsr_jax.sweep define them) taken out of the global registry again afterwards."""
  saved = {n: flags.FLAGS[n] for n in ("workdir", "config", "kills", "seed", "damage")
           if n in flags.FLAGS}
  for name in saved:
    delattr(flags.FLAGS, name)
  spec = importlib.util.spec_from_file_location("soak", os.path.join(REPO, "experiments",
                                                                     "soak.py"))
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  finally:
    for name in ("workdir", "config", "kills", "seed", "damage"):
      if name in flags.FLAGS:
        delattr(flags.FLAGS, name)
    for name, flag in saved.items():
      flags.FLAGS[name] = flag
  return module


soak = load()


def write(root, files: dict):
  for rel, text in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


def test_differences_names_every_output_that_is_not_byte_identical(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  same = {"metrics.json": "{}", "predictions/x.jsonl": "1", "submissions/x.tvr.json": "s"}
  write(a, dict(same, **{"tvr_submission.json": "t", "predictions/only_a.jsonl": "z"}))
  write(b, dict(same, **{"tvr_submission.json": "T", "log.txt": "not an output"}))
  assert soak.differences(a, b) == ["tvr_submission.json", "predictions/only_a.jsonl"]
  write(b, {"tvr_submission.json": "t", "predictions/only_a.jsonl": "z"})
  assert soak.differences(a, b) == []


def test_damage_changes_one_file_of_the_latest_checkpoint_step(tmp_path):
  wd = str(tmp_path)
  write(wd, {"checkpoints/sft/5/state/data": "x" * 200, "checkpoints/sft/2/state/data": "z",
             "checkpoints/sft.damaged/3/d": "y",
             "metrics.json": "{}"})
  path = soak.damage_one(wd, np.random.default_rng(0))
  assert path == os.path.join(wd, "checkpoints/sft/5/state/data")
  assert open(path, "rb").read() != b"x" * 200 and os.path.getsize(path) == 200
  assert soak.damage_one(str(tmp_path / "none"), np.random.default_rng(0)) is None


def test_a_two_kill_soak_of_the_smoke_run_ends_with_the_same_outputs(tmp_path):
  """The soak itself, short: the smoke run killed with SIGKILL at 2 seeded instants, resumed
  each time, ends with the uninterrupted run's outputs byte for byte. (Its starts reuse the
  session's compilation cache, which the smoke runs of test_train.py etc. fill first.)"""
  import subprocess   # pylint: disable=g-import-not-at-top
  import sys   # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "soak.py"),
                         f"--workdir={tmp_path}", "--kills=2", "--seed=0"], cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "2 kills landed of 2" in proc.stdout, proc.stdout
  assert "outputs identical to the uninterrupted run in every round" in proc.stdout
