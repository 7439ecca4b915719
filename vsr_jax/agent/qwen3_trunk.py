"""A pretrained Qwen3 decoder as the agent's trunk (agent.backbone='qwen3'; the paper's agent is
Qwen3-VL-2B, whose language model this is).

The agent's prefix ([VERIFY] query [GROUND] frames [REFINE]) enters the decoder as input
embeddings: the query's tokens through the checkpoint's embedding table, the frames through
the agent's projector (frame features, and the engine's view, -> the decoder's width), the
special positions as learned vectors; positions are rotary (0..P-1, then the latents). The
verify / ground / refine heads and the [REFINE] latents are the Agent's, unchanged, so SFT and
GRPO run on it as on the from-scratch trunk. HQR's word logits are the hidden state times the
embedding table (the output layer of a tied checkpoint, which Qwen3-VL-2B is).

agent.lora_rank > 0: the decoder's weights stay frozen (params key 'pretrained', which
towers.freeze routes to zero updates: no optimizer state for them) and LoRA adapters on every
projection train; 0: full fine-tuning (params key 'backbone'). Token ids are the pipeline's
(Qwen id + 1, 0 = padding: engine/qwen3_text.py), so the data must be tokenised with the same
tokenizer: engine.text.kind='qwen3'.
"""

from __future__ import annotations

import hashlib
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vsr_jax import registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data.tokenizer import PAD
from vsr_jax.agent.policy import Backbone
from vsr_jax.models import qwen3


class Qwen3Trunk(nn.Module):
  cfg: qwen3.Qwen3Config
  lora_rank: int = 0
  lora_alpha: float = 16.0
  dtype: str = "float32"
  causal = True
  cache_batch_axis = 1   # the decoder's cache is (k, v) [layers, B, S, kv_heads, d]

  @property
  def width(self) -> int:
    return self.cfg.hidden

  def setup(self):
    if self.lora_rank:
      self.pretrained = qwen3.Qwen3(self.cfg, frozen=True, dtype=self.dtype)
      self.lora = qwen3.Lora(self.cfg, self.lora_rank, self.lora_alpha)
    else:
      self.backbone = qwen3.Qwen3(self.cfg, frozen=False, dtype=self.dtype)

  def _model(self) -> qwen3.Qwen3:
    return self.pretrained if self.lora_rank else self.backbone

  def embed_words(self, tokens):
    v = self._model().embed(jnp.maximum(tokens - 1, 0)).astype(jnp.float32)
    return jnp.where((tokens != PAD)[..., None], v, 0.0)

  def __call__(self, x, mask, positions, past):
    lora, scale = self.lora() if self.lora_rank else (None, 1.0)
    hidden, cache = self._model()(x, positions, mask, past, lora, scale)
    return hidden.astype(jnp.float32), cache

  def word_logits(self, h):
    """[B, H'] -> [B, V + 1] over pipeline ids (column 0, padding, never chosen). The output
    layer reads the hidden state, the first H columns of what the head is given (with
    agent.refine_words the query's word bag follows; the tied output layer has no place
    for it)."""
    h = h[..., :self.cfg.hidden]
    table = self._model().embed_table()
    logits = h.astype(table.dtype) @ table.T
    pad = jnp.full(logits.shape[:-1] + (1,), -1e9, jnp.float32)
    return jnp.concatenate([pad, logits.astype(jnp.float32)], -1)


def _directory(config) -> str:
  return qwen3.local_dir(config.agent.backbone_dir, "agent.backbone_dir",
                         "config.json and the safetensors weights (agent.backbone='qwen3')")


def _digest(path: str) -> str:
  """Of the tokenizer as the library reads it (the file's formatting does not count)."""
  import tokenizers
  return hashlib.sha1(tokenizers.Tokenizer.from_file(path).to_str().encode()).hexdigest()


def check(config) -> None:
  """Before any data is read: the checkpoint's config and weight shapes (file headers only),
  a tokenizer shared with the engine, an output layer for HQR."""
  directory = _directory(config)
  arch = qwen3.Qwen3Config.load(directory)
  qwen3.check_weights(directory, arch)
  qwen3.dtype_of(config.agent.backbone_dtype)
  if config.engine.text.kind != "qwen3":
    raise ConfigError(
        f"config.agent.backbone='qwen3' reads Qwen token ids: it needs engine.text.kind="
        f"'qwen3' (the engine's tokenizer tokenises the data), not {config.engine.text.kind!r}")
  engine_dir = config.engine.text.pretrained_dir
  engine_vocab = qwen3.Qwen3Config.load(engine_dir).vocab_size
  if engine_vocab != arch.vocab_size:
    raise ConfigError(
        f"{directory}/config.json has vocab_size {arch.vocab_size}, the engine's "
        f"{engine_dir}/config.json {engine_vocab}: the agent and the engine must share a "
        "tokenizer")
  mine, theirs = (os.path.join(d, "tokenizer.json") for d in (directory, engine_dir))
  if os.path.isfile(mine) and os.path.isfile(theirs) and _digest(mine) != _digest(theirs):
    raise ConfigError(f"{mine} differs from the engine's {theirs}: the agent and the engine "
                      "must share a tokenizer")
  hqr = config.agent.refine == "hqr" or "sft_hqr" in config.stages
  if hqr and not arch.tie_embeddings:
    raise ConfigError(
        f"{directory}/config.json: tie_word_embeddings is false, and HQR reads its words from "
        "the tied output layer (the embedding table): train SQR only (drop sft_hqr from "
        "config.stages) or use a tied checkpoint")


def build(config, vocab_size: int) -> Qwen3Trunk:
  arch = qwen3.Qwen3Config.load(_directory(config))
  if vocab_size != arch.vocab_size + 1:
    raise ConfigError(
        f"agent.backbone_dir={config.agent.backbone_dir!r} has vocab_size {arch.vocab_size}, "
        f"but the data was tokenised into {vocab_size - 1} ids: the agent and the engine "
        "(engine.text.pretrained_dir) must share a tokenizer")
  return Qwen3Trunk(arch, lora_rank=config.agent.lora_rank, lora_alpha=config.agent.lora_alpha,
                    dtype=config.agent.backbone_dtype)


def load(config, params: dict) -> dict:
  directory = _directory(config)
  arch = qwen3.Qwen3Config.load(directory)
  key = "pretrained" if config.agent.lora_rank else "backbone"
  # In the placeholders' dtype: trainable weights are float32 masters, frozen ones are stored
  # in agent.backbone_dtype (qwen3.Qwen3.storage_dtype).
  weights = qwen3.load_weights(directory, arch, np.dtype(params[key]["embed"].dtype))
  return dict(params, **{key: {k: jnp.asarray(v) for k, v in weights.items()}})


registry.AGENT_BACKBONES.register("qwen3", Backbone(build=build, load=load, check=check))
