"""The paper's own models: a Qwen3-VL-Embedding text path as the engine's text tower and a
Qwen3-VL decoder as the agent's trunk (README, "Running at the paper's scale").

  --config=configs/qwen3.py \
      --config.engine.text.pretrained_dir=/models/Qwen3-VL-Embedding-2B \
      --config.agent.backbone_dir=/models/Qwen3-VL-2B-Instruct \
      --config.data.manual_dir=/data/verified_fig
  --config=configs/qwen3.py:smoke \
      --config.engine.text.pretrained_dir=DIR --config.agent.backbone_dir=DIR
      (DIR from `experiments/tiny_qwen3.py --out=DIR`: a tiny random Qwen3, every stage in
      about a minute on a CPU; tests/test_qwen3_smoke.py runs it)

Default: Charades-FIG (configs/charades_fig.py's data) with both models in bfloat16, the
engine's query vectors in the embedding model's own 2048-d space (engine.embed_dim = its
hidden size: the projection starts as the identity), 8 soft tokens, and the agent fully
fine-tuned as the reference does (agent.lora_rank=0; set it > 0 for LoRA).
"""

import os

from vsr_jax import config_lib, real_config

PRESETS = ("default", "smoke")


def get_config(arg=None):
  preset = config_lib.check_preset(arg, PRESETS, __file__)
  if preset == "smoke":
    synthetic = config_lib.load_module(os.path.join(os.path.dirname(__file__), "synthetic.py"),
                                       "vsr_config_")
    c = synthetic.get_config("smoke")
    width = 64                       # experiments/tiny_qwen3.py's hidden size
    c.engine.text.dtype = c.agent.backbone_dtype = "float32"
    c.agent.lora_rank = 4
    c.data.max_query_len = 16        # BPE pieces of the synthetic captions
  else:
    c = real_config.real_config("default", __file__, tfds_name="verified_fig/charades",
                                eval_split="test", max_frames=64)
    width = 2048                     # Qwen3-VL-2B's (and its embedding model's) hidden size
    c.engine.embed_dim = width
    c.engine.text.dtype = c.agent.backbone_dtype = "bfloat16"
    c.engine.text.num_slots = 8
    c.agent.num_latents = 8
    c.agent.lora_rank = 0
    c.data.max_query_len = 48        # BPE pieces
  c.engine.text.kind = "qwen3"
  c.engine.text.width = width
  c.agent.backbone = "qwen3"
  # The pretrained trunk reads the query itself; the engine's word table is not copied in.
  c.agent.refine_words = False
  return c
