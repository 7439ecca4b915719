"""Parameter count and memory of a Qwen3 / Qwen3-VL text decoder as this project builds it,
computed from a checkpoint's config.json shapes (no weights needed).

  .venv/bin/python experiments/qwen3_sizes.py [--config_json=PATH ...] [--lora_rank=16]

Without --config_json it reads the language-model settings of the paper's two models as their
published config.json files give them (below, typed in: this machine cannot download them;
pass the downloaded files to check). Prints, per model: the decoder's parameters (embedding
table, layers, final norm; no vision tower, which this project does not build: frames arrive as
features), the bfloat16 bytes of the weights, what the training state of the agent stage holds
(full fine-tuning with AdamW: float32 master weights + gradients + two moments, as
models/qwen3.py keeps trainable weights; LoRA: the frozen bfloat16 weights + float32 adapters
with their gradients and moments) and the LoRA adapters' size. Activations are not counted.
"""

from __future__ import annotations

import json

from absl import app, flags

from vsr_jax.models import qwen3

# The text_config of Qwen/Qwen3-VL-2B-Instruct (the agent) and of Qwen/Qwen3-VL-Embedding-2B
# (the engine; the same language model): Qwen3-1.7B's shape.
PAPER = {
    "Qwen3-VL-2B (agent) / Qwen3-VL-Embedding-2B (engine)": {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "tie_word_embeddings": True,
        "text_config": {"vocab_size": 151936, "hidden_size": 2048, "num_hidden_layers": 28,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                        "intermediate_size": 6144, "rms_norm_eps": 1e-6,
                        "rope_theta": 5000000, "hidden_act": "silu",
                        "tie_word_embeddings": True}},
}
flags.DEFINE_multi_string("config_json", [], "config.json files to size (default: the paper's)")
flags.DEFINE_integer("lora_rank", 16, "LoRA rank for the adapters' size")
FLAGS = flags.FLAGS
GIB = 2.0 ** 30


def sizes(cfg: qwen3.Qwen3Config, lora_rank: int) -> dict:
  n = cfg.num_params()
  embed = cfg.vocab_size * cfg.hidden
  lora = sum(a * b * c for a, b, c in qwen3.lora_shapes(cfg, lora_rank).values())
  return {"params": n, "non_embedding": n - embed, "bf16_weights_gib": 2 * n / GIB,
          "f32_weights_gib": 4 * n / GIB,
          "full_ft_adamw_f32_gib": 4 * 4 * n / GIB,
          "lora_params": lora, "lora_state_gib": (2 * n + 4 * 4 * lora) / GIB}


def main(argv):
  del argv
  models = dict(PAPER)
  for path in FLAGS.config_json:
    with open(path, encoding="utf-8") as f:
      models[path] = json.load(f)
  for name, raw in models.items():
    cfg = qwen3.Qwen3Config.from_json(raw, name)
    s = sizes(cfg, FLAGS.lora_rank)
    print(f"{name}\n  {cfg.layers} layers, hidden {cfg.hidden}, heads {cfg.heads} "
          f"(kv {cfg.kv_heads}, head_dim {cfg.head_dim}), MLP {cfg.intermediate}, vocab "
          f"{cfg.vocab_size}, tied {cfg.tie_embeddings}")
    print(f"  decoder parameters   {s['params'] / 1e9:.3f} B ({s['non_embedding'] / 1e9:.3f} B "
          "without the embedding table)")
    print(f"  weights              {s['bf16_weights_gib']:.2f} GiB bfloat16, "
          f"{s['f32_weights_gib']:.2f} GiB float32")
    print(f"  full fine-tuning     {s['full_ft_adamw_f32_gib']:.2f} GiB (float32 master "
          "weights, gradients, AdamW moments; activations not counted)")
    print(f"  LoRA rank {FLAGS.lora_rank:<3d}        {s['lora_params'] / 1e6:.1f} M adapter "
          f"parameters; {s['lora_state_gib']:.2f} GiB state (frozen bf16 weights + f32 "
          "adapters, gradients, moments)")
    print(json.dumps({"model": name, **s}))


if __name__ == "__main__":
  app.run(main)
