"""Tests for vsr_jax.stages (base.py): the sharing keys (two runs with equal keys train the same
stage), checkpoint folders, finished stages, and naming checkpoints to evaluate. Training
itself: test_train.py."""
import os

import pytest

from vsr_jax import config_lib, registry, stages
from vsr_jax.workdir import WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def keys(**overrides):
  return stages.stage_keys(config_lib.load(SMOKE, {k: str(v) for k, v in overrides.items()}))


@pytest.mark.parametrize("field, value, changed", [
    ("eval.turns", 3, set()),                                  # evaluation only
    ("index.backend", "scann", set()),
    ("log.every_steps", 3, set()),
    ("agent.num_latents", 1, {"sft", "sft_hqr", "grpo"}),       # every soft-token point shares 0
    ("sft.ret_weight", 0.5, {"sft", "sft_hqr", "grpo"}),
    ("grpo.advantage", "rloo", {"grpo"}),
    ("grpo.rewards.answer", 0.0, {"grpo"}),
    ("engine.train.fine_keep", 0.5, {"engine", "sft", "sft_hqr", "grpo"}),
    ("data.synthetic.noise", 0.4, {"engine", "sft", "sft_hqr", "grpo"}),
    ("seed", 1, {"engine", "sft", "sft_hqr", "grpo"}),
])
def test_stage_keys_change_with_what_a_stage_trains(field, value, changed):
  base, other = keys(), keys(**{field: value})
  assert set(base) == {"engine", "sft", "sft_hqr", "grpo"}
  assert {s for s in base if base[s] != other[s]} == changed


def test_folders_of_the_two_phase_engine():
  config = config_lib.load(SMOKE, {"engine.train.text_only_steps": "10"})
  assert registry.STAGES.get("engine").folders(config) == [("engine", 20), ("engine_text", 10)]
  assert stages.folder_owner(config, "engine_text") == "engine"
  assert stages.folder_owner(config, "grpo") == "grpo"
  assert stages.folder_owner(config, "nope") is None


def test_finished_and_available(tmp_path):
  config = config_lib.load(SMOKE)
  folder = tmp_path / "checkpoints" / "sft"
  folder.mkdir(parents=True)
  (folder / "15").mkdir()
  assert not stages.finished(config, str(tmp_path), "sft")
  (folder / "20").mkdir()
  assert stages.finished(config, str(tmp_path), "sft")
  assert stages.available(str(tmp_path)) == "; saved: sft at steps 15, 20"
  assert stages.available(str(tmp_path / "none")) == "; the workdir holds no checkpoint"


def test_parse_checkpoint_names_what_exists(tmp_path):
  (tmp_path / "checkpoints" / "sft" / "20").mkdir(parents=True)
  config = config_lib.load(SMOKE, {"eval.checkpoint": "sft:20"})
  assert stages.parse_checkpoint(config, str(tmp_path)) == {"sft": 20}
  assert stages.parse_checkpoint(config_lib.load(SMOKE), str(tmp_path)) == {}
  bad = config_lib.load(SMOKE, {"eval.checkpoint": "sfft:20"})
  with pytest.raises(WorkdirError, match="no stage of this run writes a checkpoint folder 'sfft'"
                                         "; saved: sft at steps 20"):
    stages.parse_checkpoint(bad, str(tmp_path))


def test_a_dataset_read_from_a_folder_keys_the_engine_by_that_folder():
  def engine_key(folder):
    return keys(**{"data.source": "files", "data.dir": folder,
                   "engine.train.source": "train"})["engine"]
  assert engine_key("/a") != engine_key("/b")
  assert keys(**{"data.dir": "/a"})["engine"] == keys(**{"data.dir": "/b"})["engine"]  # generated
