"""Makes a tiny random Qwen3 model directory in the Hugging Face layout (no download): what the
Qwen3 engine and agent read from a real checkpoint, at a size a CPU test runs in seconds.

  .venv/bin/python experiments/tiny_qwen3.py --out=DIR [--hidden=64 --layers=2 ...]

DIR gets config.json (Qwen3ForCausalLM), model.safetensors (random weights, seed --seed) and
tokenizer.json: a byte-level BPE trained on the synthetic world's words and the embedding
template's text, with Qwen's special tokens (<|endoftext|>, <|im_start|>, <|im_end|>). Written
into a temporary folder and renamed into place: a DIR that exists is reused when it was made
with the same settings (its tiny_qwen3.json says so) and refused otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np
from absl import app, flags

from vsr_jax.data import synthetic

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TEMPLATE_TEXT = ("system user assistant Represent the user's input. Retrieve the video that "
                 "matches the query.")


def settings(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128,
             vocab=512, seed=0) -> dict:
  return dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
              intermediate=intermediate, vocab=vocab, seed=seed)


def _tokenizer(vocab: int):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  words = sorted({w for ws in synthetic.WORDS.values() for w in ws})
  texts = [" ".join(words)] + [TEMPLATE_TEXT] * 20 + [f"a {w} " * 3 for w in words]
  trainer = trainers.BpeTrainer(vocab_size=vocab - len(SPECIAL), special_tokens=[],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  tok.add_special_tokens(list(SPECIAL))   # last ids, as in Qwen's vocabulary
  return tok


def _config(s: dict, vocab: int) -> dict:
  return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
          "vocab_size": vocab, "hidden_size": s["hidden"], "num_hidden_layers": s["layers"],
          "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
          "head_dim": s["head_dim"], "intermediate_size": s["intermediate"],
          "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
          "tie_word_embeddings": True, "max_position_embeddings": 512,
          "torch_dtype": "float32"}


def _weights(s: dict, vocab: int) -> dict:
  """Random weights of Qwen3ForCausalLM's names and [out, in] shapes."""
  rng = np.random.default_rng(s["seed"])
  h, i, d = s["hidden"], s["intermediate"], s["head_dim"]

  def w(*shape, scale=None):
    return (rng.normal(0, scale or 1 / np.sqrt(shape[-1]), shape)).astype(np.float32)

  out = {"model.embed_tokens.weight": w(vocab, h, scale=0.5),
         "model.norm.weight": np.ones(h, np.float32)}
  for n in range(s["layers"]):
    p = f"model.layers.{n}."
    out.update({
        p + "self_attn.q_proj.weight": w(s["heads"] * d, h),
        p + "self_attn.k_proj.weight": w(s["kv_heads"] * d, h),
        p + "self_attn.v_proj.weight": w(s["kv_heads"] * d, h),
        p + "self_attn.o_proj.weight": w(h, s["heads"] * d),
        p + "self_attn.q_norm.weight": np.ones(d, np.float32),
        p + "self_attn.k_norm.weight": np.ones(d, np.float32),
        p + "input_layernorm.weight": np.ones(h, np.float32),
        p + "post_attention_layernorm.weight": np.ones(h, np.float32),
        p + "mlp.gate_proj.weight": w(i, h), p + "mlp.up_proj.weight": w(i, h),
        p + "mlp.down_proj.weight": w(h, i)})
  return out


def make(directory: str, **kwargs) -> str:
  """Makes (or reuses) the tiny model at `directory`; returns it."""
  from safetensors.numpy import save_file
  s = settings(**kwargs)
  stamp = os.path.join(directory, "tiny_qwen3.json")
  if os.path.exists(directory):
    if os.path.isfile(stamp):
      with open(stamp, encoding="utf-8") as f:
        if json.load(f) == s:
          return directory
    raise SystemExit(f"{directory} exists and was not made by tiny_qwen3.py with {s}: remove "
                     "it or choose another --out")
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tiny_qwen3_", dir=parent)
  try:
    tok = _tokenizer(s["vocab"])
    vocab = tok.get_vocab_size(with_added_tokens=True)
    tok.save(os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(_config(s, vocab), f, indent=2)
    save_file(_weights(s, vocab), os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "tiny_qwen3.json"), "w", encoding="utf-8") as f:
      json.dump(s, f)
    os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def main(argv):
  del argv
  out = make(flags.FLAGS.out, **{k: flags.FLAGS[k].value for k in settings()})
  print(json.dumps({"model_dir": out}))


if __name__ == "__main__":
  # Flags only when run as a script: other scripts and tests import make().
  flags.DEFINE_string("out", None, "the model directory to make", required=True)
  for _name, _value in settings().items():
    flags.DEFINE_integer(_name, _value, f"the model's {_name}")
  sys.exit(app.run(main))
