"""configs/qwen3.py:smoke end to end: every stage (engine, sft, sft_hqr, grpo), evaluated by rows
that read each of them, with the Qwen3 engine text path and the Qwen3 agent trunk (LoRA), on a
tiny random Qwen3 made by experiments/tiny_qwen3.py (no download)."""

import json
import os
import sys

import numpy as np

from vsr_jax import config_lib, defaults, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import tiny_qwen3  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(REPO, "configs", "qwen3.py") + ":smoke"


def test_every_stage_with_the_qwen3_engine_and_agent(tmp_path):
  model = tiny_qwen3.make(str(tmp_path / "tiny"))
  # Every stage; the rows that read each stage's parameters (agent_no_refine and
  # agent_sqr_stage1 run the same programs as the rows kept), fewer steps than :smoke.
  rows = defaults.default_rows("engine_single_shot", "agent_hqr", "agent_sqr_stage2")
  config = config_lib.load(CONFIG, {"engine.text.pretrained_dir": model,
                                    "agent.backbone_dir": model, "eval.rows": str(rows),
                                    "engine.train.steps": "12", "sft.steps": "8",
                                    "grpo.steps": "2", "checkpoint.every_steps": "6"})
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert set(metrics) == set(config.eval.rows)
  for row, m in metrics.items():
    assert np.isfinite(m["vr_r1"]) and 0.0 <= m["vr_r1"] <= 1.0, row
  # The stages trained the trunk's adapters and left the checkpoint's weights as loaded.
  from safetensors.numpy import load_file
  from vsr_jax.stages import base
  raw = load_file(os.path.join(model, "model.safetensors"))
  params = base.load_params(config, workdir, "grpo")
  trunk = params["trunk"]
  np.testing.assert_array_equal(trunk["pretrained"]["q"][0],
                                raw["model.layers.0.self_attn.q_proj.weight"].T)
  assert float(np.abs(np.asarray(trunk["lora"]["q_b"])).max()) > 0
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["agent"]["backbone"] == "qwen3"


def test_a_bad_checkpoint_fails_first_and_leaves_the_workdir_free(tmp_path):
  """A tensor whose shape disagrees with config.json: one error line naming the file, before
  any data is made or anything compiles; the corrected command may use the same workdir."""
  import shutil
  import subprocess
  model = tiny_qwen3.make(str(tmp_path / "tiny"))
  bad = tmp_path / "bad"
  shutil.copytree(model, bad)
  cfg = json.loads((bad / "config.json").read_text())
  cfg["intermediate_size"] = 96
  (bad / "config.json").write_text(json.dumps(cfg))
  wd = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "vsr_jax.main", f"--config={CONFIG}", f"--workdir={wd}",
       f"--config.engine.text.pretrained_dir={bad}", f"--config.agent.backbone_dir={model}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert f"{bad}/model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape " \
         "(128, 64), config.json implies (96, 64)" in proc.stderr
  assert not os.path.exists(wd / "config.json") and not os.path.exists(wd / "data")
