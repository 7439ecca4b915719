"""configs/qwen3.py:smoke end to end: every stage (engine, sft, sft_hqr, grpo) and every default
method row with the Qwen3 engine text path and the Qwen3 agent trunk (LoRA), on a tiny random
Qwen3 made by experiments/tiny_qwen3.py (no download)."""

import json
import os
import sys

import numpy as np

from vsr_jax import config_lib, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import tiny_qwen3  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(REPO, "configs", "qwen3.py") + ":smoke"


def test_every_stage_with_the_qwen3_engine_and_agent(tmp_path):
  model = tiny_qwen3.make(str(tmp_path / "tiny"))
  config = config_lib.load(CONFIG, {"engine.text.pretrained_dir": model,
                                    "agent.backbone_dir": model})
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
