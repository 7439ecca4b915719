"""The VideoSearch-R1 agent: a pre-norm transformer over the query and the retrieved video.

Sequence (the prefix): [VERIFY] query words [GROUND] frames [REFINE]. The prefix attends to
itself both ways; refinement latents are appended after it and attend to the prefix and to the
latents before them (so the prefix is encoded once and cached, as an LLM decodes).
Heads (METHOD.md §1-2):
  verify  - matched / not_matched, from [VERIFY];
  ground  - start and end over the retrieved video's frames (end >= start), from the frames;
  refine  - SQR: refine_projector (Linear -> LayerNorm -> GELU -> Linear, the last zero-init)
            maps [REFINE]'s hidden state to latent z1; latent_input_projector (LayerNorm +
            Linear, identity-init) feeds z_k back as the next position, whose hidden state
            gives z_{k+1}; append_projector (LayerNorm + Linear, identity-init) turns the N
            latents into soft tokens for the frozen engine's text tower.
            HQR: the same positions choose N discrete words instead (a categorical policy).
            agent.sqr_head='parallel': refine_projector emits all N latents at once from
            [REFINE]'s state (no rollout; cheaper, and it learns faster here: README).
            agent.refine_words: refine_projector (and HQR's word head) also read the query's
            mean word embedding beside the hidden state, a direct path from the words.
Trunk (agent.backbone): 'scratch' is the pre-norm transformer above, its blocks in this module;
any other name is a registered backbone (registry.AGENT_BACKBONES; agent/qwen3_trunk.py: a
pretrained Qwen3 decoder with LoRA or full fine-tuning). A causal backbone (an LLM) reads the
verdict from the last prefix position ([REFINE], where an LLM would generate its answer), since
[VERIFY] at the start sees nothing under causal attention; rotary positions replace the learned
ones.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vsr_jax import registry
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine.towers import DualEncoder

MATCHED, NOT_MATCHED = 0, 1
MAX_LATENTS = 64


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A registered agent trunk (config.agent.backbone).

  build(config, vocab_size) -> a module with `causal`, `width`, `embed_words(tokens)`,
  `__call__(x, mask, positions, past) -> (hidden after the final norm, cache)` and
  `word_logits(h)` (and, when its cache's batch axis is not the first, `cache_batch_axis`);
  load(config, trunk_params) -> the trunk's params with pretrained weights in
  place (called once on fresh parameters); check(config): validation that reads files (before
  any data is read). 'scratch' (build None) is the Agent's own blocks.
  """
  build: Callable | None = None
  load: Callable = lambda config, params: params
  check: Callable = lambda config: None


registry.AGENT_BACKBONES.register("scratch", Backbone())


def rect_identity(key, shape, dtype=jnp.float32):
  """Identity for square kernels, the leading identity block for rectangular ones."""
  del key
  return jnp.eye(*shape, dtype=dtype)



class DepthwiseFrameConv(nn.Module):
  """A depthwise 'SAME' convolution over frames, written as K shifted products: nn.Conv's
  parameters (kernel [K, 1, W], bias [W], the same initialisers) and function, without
  lax.conv, whose weight gradient XLA's SPMD partitioner multiplies by the replication factor
  when the batch is replicated over a mesh axis (measured: x4 on a data 2 x corpus 4 mesh, CPU,
  jax 0.10.2)."""
  features: int
  kernel_size: int = 5

  @nn.compact
  def __call__(self, x):                      # [B, F, W] -> [B, F, W]
    k = self.param("kernel", nn.initializers.lecun_normal(),
                   (self.kernel_size, 1, self.features))
    b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    low = (self.kernel_size - 1) // 2
    xp = jnp.pad(x, ((0, 0), (low, self.kernel_size - 1 - low), (0, 0)))
    n = x.shape[1]
    return sum(xp[:, j:j + n] * k[j, 0] for j in range(self.kernel_size)) + b

class Attention(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x, mask, past=None):
    """x [B, T, H]; mask [B, T, S] over keys (past keys first); past: (k, v) [B, S-T, h, d]."""
    B, T, H = x.shape
    d = H // self.heads
    q, k, v = (nn.DenseGeneral((self.heads, d), name=n)(x) for n in ("q", "k", "v"))
    if past is not None:
      k = jnp.concatenate([past[0], k], axis=1)
      v = jnp.concatenate([past[1], v], axis=1)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(d).astype(x.dtype)
    logits = jnp.where(mask[:, None], logits, jnp.finfo(logits.dtype).min)
    out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)
    return nn.DenseGeneral(H, axis=(-2, -1), name="o")(out), (k, v)


class Block(nn.Module):
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x, mask, past=None):
    y, kv = Attention(self.heads, name="attn")(nn.LayerNorm(name="ln_attn")(x), mask, past)
    x = x + y
    y = nn.Dense(self.mlp_dim, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(x))
    return x + nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(y)), kv


class Agent(nn.Module):
  vocab_size: int
  max_query_len: int
  max_frames: int
  width: int
  depth: int
  heads: int
  mlp_dim: int
  latent_dim: int        # the engine text tower's input width (soft tokens live there)
  refine: str = "sqr"    # sqr | hqr
  engine_dim: int = 0    # > 0: also read the frozen engine's frame vectors and query vector
  standardize: bool = True  # latents standardised per vector (sigma is then relative)
  latent_eps: float = 1e-6  # epsilon of the norms that act on latents (see to_latent)
  # > 0: the parallel SQR head - refine_projector emits this many latents at once from
  # [REFINE]'s state (no latent rollout); 0: the reference's rollout, one latent per position.
  parallel_latents: int = 0
  refine_hidden: int = 0    # hidden width of refine_projector (0 -> latent_dim)
  # refine_projector also reads the query's mean word embedding beside the hidden state.
  refine_words: bool = False
  # > 0: the span logits add, times a learned scale starting here, the engine's window gain
  # (the frames' standardised query similarity summed over the span: its argmax is the
  # engine's own frame_similarity window); needs engine_dim. 0: the heads alone.
  span_prior: float = 0.0
  # > 0: word embeddings of this width (the engine text tower's input word vectors,
  # agent.engine_words), projected to the trunk's width by a learned map. 0: width-wide.
  word_dim: int = 0
  trunk: nn.Module | None = None   # a registered backbone's trunk; None: own blocks

  @property
  def causal(self) -> bool:
    return self.trunk is not None and self.trunk.causal

  def setup(self):
    init = nn.initializers.normal(0.02)
    if self.trunk is None:
      self.word_embed = nn.Embed(self.vocab_size, self.word_dim or self.width,
                                 embedding_init=init)
      if self.word_dim:
        self.word_proj = nn.Dense(self.width)
      self.query_pos = self.param("query_pos", init, (self.max_query_len, self.width))
      self.frame_pos = self.param("frame_pos", init, (self.max_frames, self.width))
      self.latent_pos = self.param("latent_pos", init, (MAX_LATENTS, self.width))
      self.blocks = [Block(self.heads, self.mlp_dim, name=f"block{i}")
                     for i in range(self.depth)]
      self.ln_out = nn.LayerNorm()
      # HQR: a word per refinement position (a backbone brings its own output layer).
      self.word_head = nn.Dense(self.vocab_size)
    self.special = self.param("special", init, (3, self.width))   # VERIFY, GROUND, REFINE
    self.frame_ln = nn.LayerNorm()
    self.frame_proj = nn.Dense(self.width)
    # Local temporal context for the frame tokens (where an event starts and ends).
    self.frame_conv = DepthwiseFrameConv(self.width, kernel_size=5)
    if self.engine_dim:
      # What the search engine sees: its per-frame vectors, their similarity to the query
      # vector searched with, and that vector (the agent and the engine share a family, as
      # the reference's Qwen3-VL agent and Qwen3-VL-Embedding engine do).
      self.engine_frame_ln = nn.LayerNorm()
      self.engine_frame_proj = nn.Dense(self.width)
      self.sim_proj = nn.Dense(self.width)
      self.query_proj = nn.Dense(self.width)
    self.verify_head = nn.Dense(2)
    if self.span_prior:
      if not self.engine_dim:
        raise ValueError("span_prior > 0 reads the engine's view: it needs engine_dim > 0 "
                         "(agent.engine_inputs=True)")
      self.span_prior_scale = self.param(
          "span_prior_scale", nn.initializers.constant(self.span_prior), ())
    self.start_head = nn.Dense(1)
    self.end_head = nn.Dense(1)
    # SQR projectors (METHOD.md §2).
    if self.refine_words:   # the bag of words on the hidden state's (unit) scale
      self.refine_words_ln = nn.LayerNorm()
    self.refine_in = nn.Dense(self.refine_hidden or self.latent_dim)
    self.refine_ln = nn.LayerNorm()
    self.refine_out = nn.Dense(self.latent_dim * max(self.parallel_latents, 1),
                               kernel_init=nn.initializers.zeros)
    self.latent_in_ln = nn.LayerNorm(epsilon=self.latent_eps)
    self.latent_in = nn.Dense(self.width, kernel_init=rect_identity)
    self.append_ln = nn.LayerNorm(epsilon=self.latent_eps)
    self.append = nn.Dense(self.latent_dim, kernel_init=rect_identity)

  # ------------------------------------------------------------------ trunk
  def _words(self, tokens):
    if self.trunk is not None:
      return self.trunk.embed_words(tokens)
    words = self.word_embed(tokens)
    return self.word_proj(words) if self.word_dim else words

  def _run(self, x, mask, positions, past):
    """The trunk over x [B, T, H] (mask [B, T, S] over keys, past keys first) -> hidden after
    the final norm [B, T, H], cache."""
    if self.trunk is not None:
      return self.trunk(x, mask, positions, past)
    cache = []
    for i, block in enumerate(self.blocks):
      x, kv = block(x, mask, None if past is None else past[i])
      cache.append(kv)
    return self.ln_out(x), cache

  # ------------------------------------------------------------------ prefix
  def prefix_inputs(self, tokens, frames, num_frames, engine_frames=None, query_vec=None):
    """The prefix's input embeddings x [B, P, H] and its validity mask [B, P]."""
    B, L = tokens.shape
    F = frames.shape[1]
    sp = jnp.broadcast_to(self.special, (B, 3, self.width))
    words = self._words(tokens)
    frames = self.frame_proj(self.frame_ln(frames))
    if self.trunk is None:   # a backbone brings rotary positions
      words, frames = words + self.query_pos[:L], frames + self.frame_pos[:F]
    if self.engine_dim:
      if engine_frames is None or query_vec is None:
        raise ValueError("this agent reads the engine's view (agent.engine_inputs=True): "
                         "pass engine_frames [B, F, E] and query_vec [B, E]")
      unit = engine_frames * jax.lax.rsqrt(
          jnp.maximum(jnp.sum(jnp.square(engine_frames), -1, keepdims=True), 1e-12))
      sim = jnp.einsum("bfe,be->bf", unit, query_vec)[..., None]
      frames = frames + self.engine_frame_proj(self.engine_frame_ln(engine_frames)) + \
          self.sim_proj(sim)
      sp = sp.at[:, 0].add(self.query_proj(query_vec))
    frame_ok = jnp.arange(F)[None] < num_frames[:, None]
    # Zero the padding first: the convolution must not read frames past the video's end.
    frames = jnp.where(frame_ok[..., None], frames, 0.0)
    frames = frames + self.frame_conv(frames)
    x = jnp.concatenate([sp[:, :1], words, sp[:, 1:2], frames, sp[:, 2:]], axis=1)
    valid = jnp.concatenate([
        jnp.ones((B, 1), bool), tokens != PAD, jnp.ones((B, 1), bool), frame_ok,
        jnp.ones((B, 1), bool)], axis=1)
    return x, valid

  def prefix(self, tokens, frames, num_frames, engine_frames=None, query_vec=None):
    """tokens [B, L], frames [B, F, D], num_frames [B] -> hidden [B, P, H], cache, mask.

    engine_frames [B, F, E], query_vec [B, E]: the frozen engine's view (when engine_dim > 0).
    """
    B = tokens.shape[0]
    x, valid = self.prefix_inputs(tokens, frames, num_frames, engine_frames, query_vec)
    P = x.shape[1]
    mask = valid[:, None, :] & jnp.ones((B, P, 1), bool)
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((P, P), bool))[None]
    # Rotary positions count the valid tokens only, as an LLM sees its prompt (no gap for a
    # short query's padding); learned positions are added in prefix_inputs instead.
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    hidden, cache = self._run(x, mask, positions, None)
    return hidden, cache, valid

  def window_gain(self, engine_frames, query_vec, num_frames):
    """[B, F, F]: the engine's query-frame scores (its raw dot products, as its own grounding
    scores them), standardised over the video's frames and summed over frames s..e."""
    F = engine_frames.shape[1]
    scores = jnp.einsum("bfe,be->bf", engine_frames, query_vec)
    valid = jnp.arange(F)[None] < num_frames[:, None]
    n = jnp.maximum(num_frames, 1)[:, None].astype(scores.dtype)
    mean = jnp.sum(jnp.where(valid, scores, 0.0), -1, keepdims=True) / n
    centred = jnp.where(valid, scores - mean, 0.0)
    var = jnp.sum(jnp.square(centred), -1, keepdims=True) / n
    # A floor relative to the scores' size: a video whose frames score alike (still or
    # repeated frames) keeps its rounding noise near zero instead of standardising it to 1.
    z = centred * jax.lax.rsqrt(var + 1e-6 * (jnp.square(mean) + 1.0))
    prefix = jnp.concatenate([jnp.zeros_like(z[:, :1]), jnp.cumsum(z, -1)], -1)
    return jax.lax.stop_gradient(prefix[:, None, 1:] - prefix[:, :-1, None])

  def heads_out(self, hidden, num_frames, L: int, gain=None):
    """Verify logits [B, 2] and span logits [B, F, F] (-inf outside s <= e < num_frames).
    gain [B, F, F]: the engine's window gain (span_prior)."""
    F = hidden.shape[1] - L - 3
    # Under causal attention [VERIFY] (position 0) sees nothing: the verdict comes from the
    # last position, which has read the query and every frame.
    verify = self.verify_head(hidden[:, -1 if self.causal else 0])
    h_frames = hidden[:, L + 2:L + 2 + F]
    start = self.start_head(h_frames)[..., 0]
    end = self.end_head(h_frames)[..., 0]
    idx = jnp.arange(F)
    ok = (idx[:, None] <= idx[None, :])[None] & (idx[None, None, :] < num_frames[:, None, None])
    span = start[:, :, None] + end[:, None, :]
    if gain is not None:
      span = span + self.span_prior_scale * gain
    span = jnp.where(ok, span, -jnp.inf)
    return verify, span

  # ------------------------------------------------------------------ latents
  def _cache_rows(self, cache, start: int, stop: int):
    """The prefix cache of rows start..stop-1 (a backbone's cache may put its batch axis
    after a layer axis: its `cache_batch_axis`)."""
    axis = getattr(self.trunk, "cache_batch_axis", 0) if self.trunk is not None else 0
    return jax.tree.map(lambda x: jax.lax.slice_in_dim(x, start, stop, axis=axis), cache)

  def latent_step(self, x_new, cache, valid, k: int):
    """One appended position: x_new [B, H] attends to the cached prefix and earlier latents."""
    B = x_new.shape[0]
    x = (x_new if self.trunk is not None else x_new + self.latent_pos[k])[:, None]
    keys = jnp.concatenate([valid, jnp.ones((B, k + 1), bool)], axis=1)
    positions = (valid.sum(1) + k)[:, None]
    h, new_cache = self._run(x, keys[:, None, :], positions, cache)
    return h[:, 0], new_cache

  def refine_state(self, h, tokens):
    """What refine_projector reads: the hidden state [B, H] (and the query's bag of words)."""
    if not self.refine_words:
      return h
    mask = (tokens != PAD)[..., None].astype(h.dtype)
    bag = (self._words(tokens) * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
    return jnp.concatenate([h, self.refine_words_ln(bag)], -1)

  def to_latent(self, h):
    """refine_projector: hidden [B, H'] -> latent [B, latent_dim] ([B, N, latent_dim] for the
    parallel head), standardised per vector.

    Standardising (zero mean, z / sqrt(var + latent_eps), no parameters) bounds the latents'
    scale near unit variance, so that the Gaussian policy's sigma is a relative perturbation
    (the reference's latents have the scale an LLM's norms give them); with latent_eps = 1 a
    small latent stays small instead of jumping to unit variance after the first update.
    Zero stays exactly zero: a fresh refiner changes nothing.
    """
    z = self.refine_out(nn.gelu(self.refine_ln(self.refine_in(h))))
    if self.parallel_latents:   # [B, N * Dl] -> [B, N, Dl]
      z = z.reshape(z.shape[:-1] + (self.parallel_latents, self.latent_dim))
    if not self.standardize:
      return z
    z = z - z.mean(-1, keepdims=True)
    return z * jax.lax.rsqrt(jnp.mean(jnp.square(z), -1, keepdims=True) + self.latent_eps)

  def latent_input(self, z):
    """latent_input_projector: latent -> the agent's input space."""
    return self.latent_in(self.latent_in_ln(z))

  def soft_tokens(self, z):
    """append_projector: latents [..., latent_dim] -> soft tokens for the engine."""
    return self.append(self.append_ln(z))

  def word_logits(self, h):
    if self.trunk is not None:
      return self.trunk.word_logits(h)
    return self.word_head(h)

  def embed_word(self, token):
    return self._words(token)

  def act(self, tokens, frames, num_frames, *, num_latents: int, mode: str, sigma: float,
          rng=None, forced=None, engine_frames=None, query_vec=None, span_sharpen=None,
          refine_rows: tuple[int, int] | None = None):
    """One turn's policy outputs for a batch (engine_frames, query_vec: see `prefix`).

    mode: greedy (latents = their means, argmax words), sample (Gaussian latents of std
    `sigma` around the means; words from the categorical), forced (replay `forced` actions:
    latents [B, N, latent_dim] for SQR, words [B, N] for HQR).
    Returns verify [B, 2] and span [B, F, F] logits and, for the N refinement positions,
    SQR: mean [B, N, Dl] and action [B, N, Dl]; HQR: logits [B, N, V] and words [B, N].
    span_sharpen (a scalar, may be traced): the span prior's weight times this (evaluation's
    calibrated sharpness; None: as trained).
    refine_rows (start, stop), static: the refinement outputs of rows start..stop-1 only
    (`forced` then holds those rows): SFT's L_ret reads a subset of its rows, and HQR's word
    rollout over the whole batch was most of its step. verify and span keep every row.
    """
    hidden, cache, valid = self.prefix(tokens, frames, num_frames, engine_frames, query_vec)
    gain = (self.window_gain(engine_frames, query_vec, num_frames) if self.span_prior
            else None)
    if gain is not None and span_sharpen is not None:
      gain = gain * span_sharpen
    verify, span = self.heads_out(hidden, num_frames, tokens.shape[1], gain)
    out = {"verify": verify, "span": span}
    h = hidden[:, -1]
    if refine_rows is not None:
      start, stop = refine_rows
      h, tokens, valid = h[start:stop], tokens[start:stop], valid[start:stop]
      cache = self._cache_rows(cache, start, stop)
    means, actions, logits, words = [], [], [], []
    parallel = self.refine == "sqr" and self.parallel_latents > 0
    if parallel:
      if num_latents > self.parallel_latents:
        raise ValueError(f"{num_latents} latents asked of a parallel SQR head that emits "
                         f"{self.parallel_latents}")
      mu_all = self.to_latent(self.refine_state(h, tokens))
    for k in range(num_latents):
      if self.refine == "sqr":
        mu = mu_all[:, k] if parallel else self.to_latent(self.refine_state(h, tokens))
        if mode == "sample":
          a = mu + sigma * jax.random.normal(jax.random.fold_in(rng, k), mu.shape)
        elif mode == "forced":
          a = forced[:, k]
        else:
          a = mu
        # The action is the environment's input from here on: no gradient through it.
        a = jax.lax.stop_gradient(a) if mode != "greedy" else a
        means.append(mu)
        actions.append(a)
        x_next = self.latent_input(a)
      else:
        lg = self.word_logits(self.refine_state(h, tokens))
        if mode == "sample":
          w = jax.random.categorical(jax.random.fold_in(rng, k), lg)
        elif mode == "forced":
          w = forced[:, k]
        else:
          w = jnp.argmax(lg, -1)
        logits.append(lg)
        words.append(w)
        x_next = self.embed_word(w)
      if k + 1 < num_latents and not parallel:
        h, cache = self.latent_step(x_next, cache, valid, k)
    if self.refine == "sqr":
      dl = self.latent_dim
      out["mean"] = jnp.stack(means, 1) if means else jnp.zeros((tokens.shape[0], 0, dl))
      out["action"] = jnp.stack(actions, 1) if actions else out["mean"]
    else:
      out["logits"] = (jnp.stack(logits, 1) if logits else
                       jnp.zeros((tokens.shape[0], 0, self.vocab_size)))
      out["words"] = (jnp.stack(words, 1) if words else
                      jnp.zeros((tokens.shape[0], 0), jnp.int32))
    return out

  def __call__(self, tokens, frames, num_frames):
    """Initialisation path: touches every parameter."""
    engine_frames = query_vec = None
    if self.engine_dim:
      B, F = frames.shape[:2]
      engine_frames = jnp.ones((B, F, self.engine_dim), frames.dtype)
      query_vec = jnp.ones((B, self.engine_dim), frames.dtype)
    hidden, cache, valid = self.prefix(tokens, frames, num_frames, engine_frames, query_vec)
    gain = (self.window_gain(engine_frames, query_vec, num_frames) if self.span_prior
            else None)
    verify, span = self.heads_out(hidden, num_frames, tokens.shape[1], gain)
    z = self.to_latent(self.refine_state(hidden[:, -1], tokens))
    z = z[:, 0] if self.parallel_latents else z
    h, _ = self.latent_step(self.latent_input(z), cache, valid, 0)
    return (verify, span, self.soft_tokens(z), self.word_logits(self.refine_state(h, tokens)),
            self.embed_word(tokens[:, 0]))


def build_agent(config, vocab_size: int, refine: str) -> Agent:
  """The agent of config.agent with the head the registered refiner `refine` reads (sqr | hqr;
  vsr_jax/agent/refiners.py)."""
  refine = registry.REFINERS.get(refine, "agent.refine").head
  a = config.agent
  fields = dict(vocab_size=vocab_size, max_query_len=config.data.max_query_len,
                max_frames=config.data.max_frames, width=a.width, depth=a.depth, heads=a.heads,
                mlp_dim=a.mlp_dim, latent_dim=config.engine.text.width,
                refine=refine,
                engine_dim=config.engine.embed_dim if a.engine_inputs else 0,
                standardize=a.standardize_latents, latent_eps=a.latent_eps,
                # HQR always rolls its words out: no N-wide refine_projector for it.
                parallel_latents=(a.num_latents if a.sqr_head == "parallel" and
                                  refine == "sqr" else 0),
                refine_hidden=a.refine_hidden, refine_words=a.refine_words,
                span_prior=a.span_prior,
                word_dim=config.engine.text.width if a.engine_words else 0)
  return Agent(**dict(fields, **_backbone_fields(config, vocab_size)))


def _backbone_fields(config, vocab_size: int) -> dict:
  """A registered backbone's trunk (its width replaces agent.width); {} for 'scratch'."""
  backbone = registry.AGENT_BACKBONES.get(config.agent.backbone, "agent.backbone")
  if backbone.build is None:
    return {}
  trunk = backbone.build(config, vocab_size)
  return {"trunk": trunk, "width": trunk.width}


def init_agent(agent: Agent, config, rng, engine_params=None, engine=None):
  """Fresh agent parameters; with `engine_params`, its word embeddings start from the engine's
  (when the widths agree), as an agent starts from a pretrained model of the engine's family.
  An agent with word_dim (agent.engine_words) takes the engine text tower's input word vectors
  (`engine`'s word_vectors: a pretrained tower's, e.g. MiniLM's) whole; without `engine` and
  `engine_params` its table stays random (a template for a restore)."""
  tokens = jnp.zeros((1, config.data.max_query_len), jnp.int32).at[:, 0].set(2)
  frames = jnp.zeros((1, config.data.max_frames, config.data.feature_dim), jnp.float32)
  params = jax.jit(agent.init)(rng, tokens, frames, jnp.ones((1,), jnp.int32))["params"]
  if "trunk" in params:   # a pretrained backbone: its checkpoint's weights
    backbone = registry.AGENT_BACKBONES.get(config.agent.backbone, "agent.backbone")
    return dict(params, trunk=backbone.load(config, params["trunk"]))
  if agent.word_dim:
    if engine is None or engine_params is None:
      return params      # a template (a restore overwrites it): the shapes are right
    table = engine.apply({"params": engine_params}, jnp.arange(agent.vocab_size)[None],
                         method=DualEncoder.word_vectors)[0]
    if table.shape != params["word_embed"]["embedding"].shape:
      raise ValueError(f"agent.engine_words: the engine's word vectors are {table.shape}, the "
                       f"agent's table {params['word_embed']['embedding'].shape}")
  else:
    table = None if engine_params is None else (
        engine_params.get("text", {}).get("token_embed", {}).get("embedding"))
  if table is not None and table.shape == params["word_embed"]["embedding"].shape:
    params = dict(params)
    # A copy: the agent's train step donates its state, which must not free the engine's table.
    params["word_embed"] = {"embedding": jnp.array(table)}
  return params
