"""Step time of the agent stages with a pretrained Qwen3 trunk against the from-scratch trunk at
equal width and depth, side by side in one run.

  .venv/bin/python experiments/backbone_benchmark.py [--model_dir=DIR] [--steps=5] \
      [--stages=sft,grpo] [--train_videos=96]

Both agents run on the same engine (configs/qwen3.py:smoke: a tiny random Qwen3 text path,
made by experiments/tiny_qwen3.py in DIR, default a temporary folder): the Qwen3 trunk (LoRA of
rank agent.lora_rank, and full fine-tuning) and agent.backbone='scratch' with the tiny model's
width, depth and heads (its MLP the model's intermediate size). Each stage's real step is built
as the stage builds it (experiments/step_efficiency.py: `Stage.loop`, its first batch), compiled
and timed over --steps calls after --warmup; the table prints seconds per step and the ratio to
the scratch trunk's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_efficiency  # pylint: disable=g-import-not-at-top,wrong-import-position
import tiny_qwen3  # pylint: disable=g-import-not-at-top,wrong-import-position

from vsr_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "qwen3.py") + ":smoke"
flags.DEFINE_string("model_dir", "", "The tiny Qwen3's folder ('' -> a temporary one).")
# --stages (agent stages only here), --steps, --warmup, --train_videos: step_efficiency's flags.
flags.FLAGS.set_default("stages", ["sft", "grpo"])
flags.FLAGS.set_default("train_videos", 96)
FLAGS = flags.FLAGS


def trunks(model: str) -> dict:
  """name -> config overrides: the Qwen3 trunk (LoRA, full) and the scratch one at its size."""
  with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
    m = json.load(f)
  common = {"engine.text.pretrained_dir": model, "agent.backbone_dir": model}
  return {
      "scratch": dict(common, **{"agent.backbone": "scratch", "agent.width": m["hidden_size"],
                                 "agent.depth": m["num_hidden_layers"],
                                 "agent.heads": m["num_attention_heads"],
                                 "agent.mlp_dim": m["intermediate_size"]}),
      "qwen3_lora": common,
      "qwen3_full": dict(common, **{"agent.lora_rank": 0}),
  }


def main(argv):
  del argv
  model = FLAGS.model_dir or os.path.join(tempfile.mkdtemp(prefix="backbone_bench_"), "tiny")
  tiny_qwen3.make(model)
  seconds = {}
  for name, overrides in trunks(model).items():
    config = config_lib.load(CONFIG, {k: str(v) for k, v in overrides.items()})
    ctx = step_efficiency.open_context(config, FLAGS.train_videos)
    for stage in FLAGS.stages:
      loop = step_efficiency.stage_loop(ctx, stage)
      state = loop.initial_state()
      _, s, state = step_efficiency.time_step(loop.step_fn, state, loop.batch_fn(0, state),
                                              FLAGS.steps, FLAGS.warmup)
      if stage == "sft":   # GRPO starts from the timed SFT state, as stage 2 from stage 1
        ctx.params["sft"] = jax.device_get(state.params)
      seconds[(name, stage)] = s
      print(f"{name:11s} {stage:8s} {s * 1e3:9.1f} ms/step", flush=True)
  print("\nstage     trunk         ms/step   x scratch")
  for stage in FLAGS.stages:
    base = seconds[("scratch", stage)]
    for name in trunks(model):
      s = seconds[(name, stage)]
      print(f"{stage:9s} {name:11s} {s * 1e3:9.1f}   {s / base:8.2f}")


if __name__ == "__main__":
  app.run(main)
