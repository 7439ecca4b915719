"""A Qwen3 decoder in Flax, sized from a Hugging Face checkpoint's `config.json`.

The text path of Qwen3 and Qwen3-VL (the paper's engine, Qwen3-VL-Embedding-2B, and agent,
Qwen3-VL-2B): token embeddings, `layers` x [RMSNorm -> grouped-query attention with q/k
RMSNorm and rotary positions -> residual, RMSNorm -> SwiGLU MLP -> residual], a final RMSNorm.
For text-only input Qwen3-VL's multimodal rotary embedding gives the three position axes the
same index, which is the plain rotary embedding computed here (tests/test_qwen3.py checks it
against transformers' Qwen3-VL text model).

Loading reads the standard layout of a local directory: `config.json`, `model.safetensors`
or `model-0000k-of-0000n.safetensors` shards with `model.safetensors.index.json`. Tensor names
of Qwen3ForCausalLM / Qwen3Model (`model.layers.0...`, `layers.0...`) and of Qwen3-VL
(`model.language_model.layers.0...`) are found by their prefix; the vision tower's tensors are
not read (our frames arrive as features). Every mismatch (missing shard or tensor, a shape that
disagrees with config.json, an unknown architecture) is a `Qwen3Error` naming the file, raised
before anything compiles.

Parameters are one flat dict, per-layer weights stacked on a leading [layers] axis so that one
scanned layer compiles once for any depth; kernels are [in, out] (torch Linear weights are
[out, in]).
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vsr_jax import config_lib

# config.json's architectures[0] -> where the text model's settings live in config.json.
ARCHITECTURES = {
    "Qwen3ForCausalLM": "", "Qwen3Model": "",
    "Qwen3VLForConditionalGeneration": "text_config", "Qwen3VLModel": "text_config",
}
MODEL_TYPES = ("qwen3", "qwen3_vl", "qwen3_vl_text")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# Our name -> the tensor's name inside a layer ("<prefix>layers.<i>.<name>"), transposed?
_LAYER = {
    "q": ("self_attn.q_proj.weight", True), "k": ("self_attn.k_proj.weight", True),
    "v": ("self_attn.v_proj.weight", True), "o": ("self_attn.o_proj.weight", True),
    "q_norm": ("self_attn.q_norm.weight", False), "k_norm": ("self_attn.k_norm.weight", False),
    "attn_norm": ("input_layernorm.weight", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "gate": ("mlp.gate_proj.weight", True), "up": ("mlp.up_proj.weight", True),
    "down": ("mlp.down_proj.weight", True),
}
# The projections LoRA adapts (agent.lora_rank > 0).
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


class Qwen3Error(config_lib.InputError):
  """A model directory or file that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
  vocab_size: int
  hidden: int
  layers: int
  heads: int
  kv_heads: int
  head_dim: int
  intermediate: int
  rms_eps: float
  rope_theta: float
  tie_embeddings: bool
  architecture: str = "Qwen3ForCausalLM"

  @classmethod
  def from_json(cls, raw: dict, path: str = "config.json") -> "Qwen3Config":
    """The text model's shape from a parsed config.json (`path` names it in errors)."""
    archs = raw.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
      raise Qwen3Error(f"{path}: architectures {archs!r}: expected one of "
                       f"{', '.join(ARCHITECTURES)} (the Qwen3 / Qwen3-VL text decoder)")
    if raw.get("model_type") not in MODEL_TYPES:
      raise Qwen3Error(f"{path}: model_type {raw.get('model_type')!r}: expected one of "
                       f"{', '.join(MODEL_TYPES)}")
    section = ARCHITECTURES[arch]
    text = raw.get(section) if section else raw
    if not isinstance(text, dict):
      raise Qwen3Error(f"{path}: {arch} keeps its language model's settings under "
                       f"{section!r}, which is missing")
    where = f"{path} ({section})" if section else path

    def get(key, kind=int, default=None):
      value = text.get(key, default)
      if value is None:
        raise Qwen3Error(f"{where}: missing key {key!r}")
      if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise Qwen3Error(f"{where}: key {key!r} must be a number, got {value!r}")
      return kind(value)

    if text.get("hidden_act", "silu") != "silu":
      raise Qwen3Error(f"{where}: hidden_act {text['hidden_act']!r}; only 'silu' is supported")
    if text.get("use_sliding_window", False):
      raise Qwen3Error(f"{where}: use_sliding_window is true; only full attention is supported")
    if text.get("attention_bias", False):
      raise Qwen3Error(f"{where}: attention_bias is true; Qwen3 has none and none is supported")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
      raise Qwen3Error(f"{where}: rope type {kind!r}; only the default rotary embedding (and "
                       "Qwen3-VL's multimodal one, which equals it on text) is supported")
    theta = text.get("rope_theta", rope.get("rope_theta"))
    if theta is None:
      raise Qwen3Error(f"{where}: missing key 'rope_theta'")
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    # transformers' default is untied.
    tie = text.get("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    cfg = cls(vocab_size=get("vocab_size"), hidden=hidden, layers=get("num_hidden_layers"),
              heads=heads, kv_heads=get("num_key_value_heads", default=heads),
              head_dim=get("head_dim", default=hidden // heads),
              intermediate=get("intermediate_size"), rms_eps=get("rms_norm_eps", float, 1e-6),
              rope_theta=float(theta), tie_embeddings=bool(tie), architecture=arch)
    if cfg.heads % cfg.kv_heads:
      raise Qwen3Error(f"{where}: num_attention_heads {cfg.heads} is not a multiple of "
                       f"num_key_value_heads {cfg.kv_heads}")
    return cfg

  @classmethod
  def load(cls, directory: str) -> "Qwen3Config":
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
      raise Qwen3Error(f"{directory}: missing config.json (a Qwen3 model directory holds "
                       f"config.json, {SINGLE} or {INDEX} with its shards, tokenizer.json)")
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise Qwen3Error(f"{path}: not valid JSON ({e})") from None
    return cls.from_json(raw, path)

  def shapes(self) -> dict:
    """Parameter name -> shape (the decoder only: no lm_head, which nothing here reads)."""
    n, h, i, d = self.layers, self.hidden, self.intermediate, self.head_dim
    return {
        "embed": (self.vocab_size, h), "norm": (h,),
        "q": (n, h, self.heads * d), "k": (n, h, self.kv_heads * d),
        "v": (n, h, self.kv_heads * d), "o": (n, self.heads * d, h),
        "q_norm": (n, d), "k_norm": (n, d), "attn_norm": (n, h), "mlp_norm": (n, h),
        "gate": (n, h, i), "up": (n, h, i), "down": (n, i, h),
    }

  def num_params(self, with_lm_head: bool = False) -> int:
    n = sum(int(np.prod(s)) for s in self.shapes().values())
    return n + (self.vocab_size * self.hidden if with_lm_head and not self.tie_embeddings else 0)


def local_dir(path: str, field: str, what: str) -> str:
  """config.<field>: an existing local model directory (`what` the files it should hold)."""
  if not path:
    raise config_lib.ConfigError(f"config.{field} is '': expected a local directory with "
                                 f"{what} (experiments/tiny_qwen3.py makes a tiny random one)")
  if not os.path.isdir(path):
    raise Qwen3Error(f"config.{field}={path!r}: no such directory")
  return path


def dtype_of(name: str):
  if name not in DTYPES:
    raise config_lib.ConfigError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
  return DTYPES[name]


# ------------------------------------------------------------------------------ loading

def shard_files(directory: str) -> list:
  """The safetensors files of `directory` (one file, or the shards its index names)."""
  index = os.path.join(directory, INDEX)
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise Qwen3Error(f"{index}: expected JSON with a 'weight_map' of tensor -> file "
                       f"({e!r})") from None
    files = sorted(set(weight_map.values()))
    for name in files:
      if not os.path.isfile(os.path.join(directory, name)):
        raise Qwen3Error(f"{index} names shard {name}, which is missing from {directory}")
    return [os.path.join(directory, f) for f in files]
  single = os.path.join(directory, SINGLE)
  if not os.path.isfile(single):
    raise Qwen3Error(f"{directory}: no {SINGLE} and no {INDEX} (the weights)")
  return [single]


def _headers(files: list) -> dict:
  """tensor name -> (file, shape), read from the safetensors headers only (no tensor data)."""
  from safetensors import safe_open
  found = {}
  for path in files:
    try:
      with safe_open(path, framework="numpy") as f:
        for key in f.keys():
          found[key] = (path, tuple(f.get_slice(key).get_shape()))
    except Exception as e:   # the library raises SafetensorError or a bare Exception
      raise Qwen3Error(f"{path}: unreadable safetensors file ({e})") from None
  return found


def _prefix(found: dict, directory: str) -> str:
  """The text model's tensor prefix ('model.', 'model.language_model.', '', ...)."""
  prefixes = sorted(k[:-len("embed_tokens.weight")] for k in found
                    if k.endswith("embed_tokens.weight") and "visual" not in k)
  if len(prefixes) != 1:
    raise Qwen3Error(f"{directory}: expected one '<prefix>embed_tokens.weight' tensor among the "
                     f"safetensors files, found {prefixes or 'none'}")
  return prefixes[0]


def check_weights(directory: str, cfg: Qwen3Config) -> dict:
  """Checks every tensor the decoder needs is present with the shape config.json implies,
  from the file headers (cheap: no weights are read). Returns name -> (file, key, transpose)."""
  found = _headers(shard_files(directory))
  prefix = _prefix(found, directory)
  wanted = {"embed": (prefix + "embed_tokens.weight", False),
            "norm": (prefix + "norm.weight", False)}
  for name, (key, t) in _LAYER.items():
    for i in range(cfg.layers):
      wanted[f"{name}.{i}"] = (f"{prefix}layers.{i}.{key}", t)
  shapes = cfg.shapes()
  plan = {}
  for name, (key, t) in wanted.items():
    if key not in found:
      raise Qwen3Error(f"{directory}: missing tensor {key!r} (config.json says "
                       f"{cfg.layers} layers of {cfg.architecture})")
    path, shape = found[key]
    base = name.split(".")[0]
    want = shapes[base][1:] if "." in name else shapes[base]
    got = shape[::-1] if t else shape
    if tuple(got) != tuple(want):
      raise Qwen3Error(f"{path}: tensor {key!r} has shape {shape}, config.json implies "
                       f"{tuple(want[::-1]) if t else tuple(want)}")
    plan[name] = (path, key, t)
  return plan


def load_weights(directory: str, cfg: Qwen3Config, dtype=np.float32) -> dict:
  """The decoder's weights from `directory` as this module's parameter dict (numpy, `dtype`)."""
  from safetensors import safe_open
  plan = check_weights(directory, cfg)
  handles = {}

  def read(path, key, t):
    if path not in handles:
      handles[path] = safe_open(path, framework="numpy").__enter__()
    value = handles[path].get_tensor(key)
    if value.dtype == np.uint16:   # numpy has no bfloat16: safetensors may hand raw bits
      raise Qwen3Error(f"{path}: tensor {key!r} is bfloat16 stored as raw bits; install "
                       "ml_dtypes (a jax dependency) so it reads as a number")
    value = np.asarray(value, dtype)
    return value.T if t else value

  try:
    params = {"embed": read(*plan["embed"]), "norm": read(*plan["norm"])}
    for name in _LAYER:
      params[name] = np.stack([read(*plan[f"{name}.{i}"]) for i in range(cfg.layers)])
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)
  return params


# ------------------------------------------------------------------------------ the decoder

def rms_norm(x, weight, eps):
  """Qwen3's RMSNorm: normalised in float32, cast back, then scaled in the input's dtype (the
  reference's order: the same rounding in bfloat16)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps)
  return weight.astype(x.dtype) * y.astype(x.dtype)


def rotary(x, positions, theta: float):
  """Rotary embedding, halves convention: x [B, T, h, d], positions [B, T]."""
  d = x.shape[-1]
  inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv, jnp.float32)
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None].astype(x.dtype)
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None].astype(x.dtype)
  x1, x2 = x[..., :d // 2], x[..., d // 2:]
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


def causal_mask(batch: int, length: int) -> jax.Array:
  return jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (batch, length, length))


def _project(x, w, lora, name, scale):
  y = x @ w[name]
  if lora is not None:
    y = y + (x @ lora[f"{name}_a"]) @ lora[f"{name}_b"] * scale
  return y


def decode(cfg: Qwen3Config, params: dict, x, positions, mask, past=None, lora=None,
           lora_scale: float = 1.0):
  """The decoder on input embeddings.

  x [B, T, H] input embeddings; positions [B, T] int (rotary); mask [B, T, S] bool, True where
  query t may attend key s (S = past length + T, past keys first); past: (k, v), each
  [layers, B, S - T, kv_heads, head_dim], or None; lora: stacked adapters or None.
  Returns (hidden [B, T, H] after the final RMSNorm, (k, v) [layers, B, S, kv_heads, d]).
  """
  B, T, _ = x.shape
  h, kv, d = cfg.heads, cfg.kv_heads, cfg.head_dim
  bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None]   # [B, 1, 1, T, S]

  def layer(x, inputs):
    w, ad, pk, pv = inputs
    y = rms_norm(x, w["attn_norm"], cfg.rms_eps)
    q = _project(y, w, ad, "q", lora_scale).reshape(B, T, h, d)
    k = _project(y, w, ad, "k", lora_scale).reshape(B, T, kv, d)
    v = _project(y, w, ad, "v", lora_scale).reshape(B, T, kv, d)
    q = rotary(rms_norm(q, w["q_norm"], cfg.rms_eps), positions, cfg.rope_theta)
    k = rotary(rms_norm(k, w["k_norm"], cfg.rms_eps), positions, cfg.rope_theta)
    if pk is not None:
      k, v = jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1)
    qg = q.reshape(B, T, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) / np.sqrt(d)
    probs = jax.nn.softmax(logits + bias, -1).astype(v.dtype)
    a = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, h * d)
    x = x + _project(a, w, ad, "o", lora_scale)
    y = rms_norm(x, w["mlp_norm"], cfg.rms_eps)
    y = jax.nn.silu(_project(y, w, ad, "gate", lora_scale)) * _project(y, w, ad, "up",
                                                                        lora_scale)
    return x + _project(y, w, ad, "down", lora_scale), (k, v)

  stacked = {n: params[n] for n in _LAYER}
  pk, pv = past if past is not None else (None, None)
  x, (k, v) = jax.lax.scan(layer, x, (stacked, lora, pk, pv))
  return rms_norm(x, params["norm"], cfg.rms_eps), (k, v)


def lora_shapes(cfg: Qwen3Config, rank: int) -> dict:
  shapes = cfg.shapes()
  out = {}
  for name in PROJECTIONS:
    n, i, o = shapes[name]
    out[f"{name}_a"], out[f"{name}_b"] = (n, i, rank), (n, rank, o)
  return out


class Qwen3(nn.Module):
  """The decoder's weights and forward pass.

  frozen: every weight behind stop_gradient (the engine's text path; an agent trained with
  LoRA), stored in `dtype`. Trainable weights (full fine-tuning) are stored in float32 and
  cast to `dtype` for the computation: master weights, as mixed-precision training keeps them
  (a bfloat16 weight would not move under a 5e-7 learning rate). The weights are zero
  placeholders until a checkpoint's are put in their place (`load_weights`, in
  `storage_dtype`); a parent module that freezes them names this module by a key in
  towers.FROZEN_KEYS, so that no optimizer moves them either.
  """
  cfg: Qwen3Config
  frozen: bool = True
  dtype: str = "float32"

  @property
  def storage_dtype(self):
    return dtype_of(self.dtype) if self.frozen else jnp.float32

  def setup(self):
    self.weights = {name: self.param(name, nn.initializers.zeros, shape, self.storage_dtype)
                    for name, shape in self.cfg.shapes().items()}

  def _w(self) -> dict:
    # jnp.asarray: parameters may arrive as host (numpy) arrays, e.g. a closed-over reference
    # policy, which a traced index cannot read.
    dt = dtype_of(self.dtype)
    if self.frozen:
      return jax.tree.map(lambda w: jax.lax.stop_gradient(jnp.asarray(w, dt)), self.weights)
    return jax.tree.map(lambda w: jnp.asarray(w).astype(dt), self.weights)

  def embed(self, ids: jax.Array) -> jax.Array:
    return self._w()["embed"][ids]

  def embed_table(self) -> jax.Array:
    return self._w()["embed"]

  def __call__(self, x, positions, mask, past=None, lora=None, lora_scale: float = 1.0):
    """See `decode`; lora: `Lora`'s adapters or None."""
    dt = dtype_of(self.dtype)
    if lora is not None:
      lora = {k: v.astype(dt) for k, v in lora.items()}
    return decode(self.cfg, self._w(), x.astype(dt), positions, mask, past, lora, lora_scale)


class Lora(nn.Module):
  """Low-rank adapters for every projection of a Qwen3 decoder (trainable; B zero-initialised,
  so the adapted decoder starts as the loaded one). Returns (adapters, scale alpha / rank)."""
  cfg: Qwen3Config
  rank: int
  alpha: float = 16.0

  @nn.compact
  def __call__(self):
    init = {"a": nn.initializers.normal(1.0 / np.sqrt(self.cfg.hidden)),
            "b": nn.initializers.zeros}
    adapters = {name: self.param(name, init[name[-1]], shape, jnp.float32)
                for name, shape in lora_shapes(self.cfg, self.rank).items()}
    return adapters, self.alpha / self.rank
