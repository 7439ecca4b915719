"""The retrieve -> verify -> (ground | refine) episode, turns 1..T as one jax.lax.scan.

Each turn searches the index with the current query vector, shows the agent the top-1
video, and takes the agent's verdict: `matched` grounds the moment and ends the episode;
`not_matched` refines (SQR: soft tokens appended to the ORIGINAL query inside the frozen
engine; HQR: discrete words) and the next turn searches with the new vector. A `done` mask
freezes finished episodes, so a batch (and, under vmap, a GRPO group) runs as one program.
Everything a turn produced is returned per turn as the state *after* that turn (finished
episodes carry their last turn forward), with the log-probability of every action taken.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vsr_jax import registry, sharding
from vsr_jax.agent.policy import MATCHED, NOT_MATCHED, Agent
from vsr_jax.agent.refiners import gaussian_logp  # noqa: F401 (the episode's latent policy)
from vsr_jax.engine.towers import DualEncoder


@jax.tree_util.register_pytree_node_class
class HostFrames:
  """A [V, F, D] frame store left on the host: a numpy array, or an np.memmap of a file on
  disk, of which an episode reads only the retrieved videos' rows (through a callback), so
  the device never holds the corpus' frames and the host only the pages it touched. Compared
  by identity, as jit's cache keys it."""

  def __init__(self, array: np.ndarray):
    if array.ndim != 3:
      raise ValueError(f"a frame store is [videos, frames, dim]; got shape {array.shape}")
    self.array = array

  def tree_flatten(self):
    return (), self          # no leaves: the store itself is the (identity-hashed) aux data

  @classmethod
  def tree_unflatten(cls, aux, children):
    del children
    return aux

  @property
  def shape(self) -> tuple:
    return tuple(self.array.shape)

  def _read(self, vid) -> np.ndarray:
    vid = np.asarray(vid)
    flat = vid.reshape(-1)
    # Sorted, unique rows: a memmap reads each page once, in file order.
    rows, back = np.unique(flat, return_inverse=True)
    frames = np.asarray(self.array[rows], np.float32)[back]
    return frames.reshape(vid.shape + frames.shape[1:])

  def take(self, vid):
    out = jax.ShapeDtypeStruct(vid.shape + self.shape[1:], jnp.float32)
    return jax.pure_callback(self._read, out, vid.astype(jnp.int32),
                             vmap_method="broadcast_all")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class Corpus:
  """What an episode reads about the corpus: the index and the videos' frames. On a mesh with
  a 'corpus' axis every [V, ...] device array is split along it (rows padded to a multiple),
  and `take` gathers the retrieved videos' rows from their shards. The frames may instead stay
  on the host (HostFrames)."""
  index: object                # ExactIndex | ScannIndex
  features: jax.Array          # [V, F, D], or HostFrames
  num_frames: jax.Array        # [V]
  frame_seconds: jax.Array     # [V]
  durations: jax.Array         # [V]
  mesh: object = None          # set when the arrays are split over its 'corpus' axis

  def tree_flatten(self):
    return (self.index, self.features, self.num_frames, self.frame_seconds,
            self.durations), (self.mesh,)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  @classmethod
  def from_split(cls, index, split, mesh=None, frame_store: str = "device") -> "Corpus":
    if frame_store not in sharding.FRAME_STORES:
      raise ValueError(f"frame_store={frame_store!r}: expected one of {sharding.FRAME_STORES}")
    on_host = frame_store == "host"
    arrays = (split.num_frames, split.frame_seconds, split.durations)
    if not on_host:
      arrays = (split.features,) + arrays
    split_over_corpus = sharding.size(mesh, sharding.CORPUS) > 1
    if split_over_corpus:   # refused before anything is placed
      sharding.check_corpus(mesh, len(split.num_frames), "episode")
    placed = [sharding.put_corpus(a, mesh) for a in arrays]
    if on_host:
      placed = [HostFrames(split.features)] + placed
    if split_over_corpus:
      return cls(index, *placed, mesh=mesh)
    return cls(index, *placed)   # one array each (replicated over a mesh's devices)

  def take(self, vid):
    """(frames [B, F, D], num_frames, frame_seconds, durations [B]) of videos vid [B]."""
    on_host = isinstance(self.features, HostFrames)
    tables = (self.num_frames, self.frame_seconds, self.durations)
    if not on_host:
      tables = (self.features,) + tables
    if self.mesh is None:
      rows = tuple(t[vid] for t in tables)
    else:
      rows = _take_sharded(tables, vid, self.mesh)
    return (self.features.take(vid),) + tuple(rows) if on_host else tuple(rows)


def _take_sharded(tables, vid, mesh):
  """Rows vid of [V, ...] tables split over 'corpus': each shard takes the rows it holds
  (zeros elsewhere) and a sum over 'corpus' assembles them; the table is never gathered."""
  axis = sharding.CORPUS
  rows = tables[0].shape[0] // sharding.size(mesh, axis)
  spec = sharding.rows_spec(vid.shape[0], mesh)

  def per_shard(local_tables, ids):
    local = ids - jax.lax.axis_index(axis) * rows
    here = (local >= 0) & (local < rows)
    safe = jnp.clip(local, 0, rows - 1)
    out = []
    for t in local_tables:
      x = t[safe]
      mask = here.reshape(here.shape + (1,) * (x.ndim - 1))
      out.append(jax.lax.psum(jnp.where(mask, x, jnp.zeros_like(x)), axis))
    return tuple(out)

  fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(tuple(P(axis) for _ in tables), spec),
                     out_specs=tuple(spec for _ in tables), check_vma=False)
  return fn(tables, vid.astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
  turns: int
  num_latents: int
  refine: str          # a registered refiner (vsr_jax/agent/refiners.py): sqr | hqr | ...
  sigma: float         # std of the Gaussian latent policy (sampling)
  mode: str            # greedy | sample | forced
  # A video the agent rejected (not_matched) is not retrieved again in a later turn of the
  # episode: the best unrejected video instead (config.rollout.mask_rejected).
  mask_rejected: bool = False
  # The engine view's query vector (config.rollout.view_query): 'turn' | 'original'.
  view_query: str = "turn"


def retrieve(index, q, gt, rejected):
  """The best video for q [B, E] that is not in rejected [B, R] (-1: empty slots), and the
  ranks of gt [B]: (video [B], rank among the unrejected videos [B], the index's own rank [B]).

  The list searched is R + 1 deep, so it holds an unrejected video. The rank among the
  unrejected is the index's rank less the rejected videos listed ahead of gt (exact when gt
  is within the list; past it, a rejected video outside the list is not known to be ahead);
  a gt that was itself rejected cannot come back: its rank is the corpus size + 1."""
  k = min(rejected.shape[1] + 1, index.size)
  _, ids, rank = index.search_and_rank(q, k, gt)
  listed = ids >= 0
  is_rej = (ids[:, :, None] == rejected[:, None, :]).any(-1) & listed
  usable = listed & ~is_rej
  pos = jnp.where(usable.any(-1), jnp.argmax(usable, -1), 0)
  vid = jnp.take_along_axis(ids, pos[:, None], 1)[:, 0]
  ahead = jnp.sum(is_rej & (jnp.arange(k)[None, :] < rank[:, None] - 1), -1)
  gt_rejected = (rejected == gt[:, None]).any(-1)
  kept_rank = jnp.where(gt_rejected, index.size + 1, rank - ahead).astype(jnp.int32)
  return vid, kept_rank, rank


def engine_view(agent: Agent, engine: DualEncoder, engine_params, frames, query_vec) -> dict:
  """The frozen engine's frame vectors and the query vector, for agents that read them."""
  if not agent.engine_dim:
    return {}
  fv = engine.apply({"params": engine_params}, frames, method=DualEncoder.frame_vectors)
  return {"engine_frames": jax.lax.stop_gradient(fv),
          "query_vec": jax.lax.stop_gradient(query_vec)}


def span_to_seconds(span_frames, frame_seconds, duration):
  s = jnp.minimum(span_frames[..., 0] * frame_seconds, duration)
  e = jnp.minimum((span_frames[..., 1] + 1) * frame_seconds, duration)
  return jnp.stack([s, jnp.maximum(e, s)], -1)


def episode(agent: Agent, engine: DualEncoder, agent_params, engine_params, corpus: Corpus,
            tokens, gt, rng, spec: EpisodeConfig, forced=None, unrolled: bool = False,
            matched_margin=None, orig_query=None, span_sharpen=None):
  """Runs T turns for a batch. tokens [B, L] int; gt [B] ground-truth video (for ranks).

  forced (spec.mode == 'forced'): a recorded trajectory {'retrieved' [T, B], 'query' [T, B, E],
  'verdict' [T, B], 'span' [T, B, 2], 'refine' [T, B, N, ...]} to replay without searching (the log-probs of
  another policy, e.g. GRPO's reference policy, on the same observations and actions).
  Returns a dict of [T, B, ...] arrays (state after each turn) and the action log-probs;
  'next_query' is the query the next turn searches with (the turn's own where it does not
  refine: a refined query that nothing searches is not computed).
  unrolled: a Python loop over the same turn function instead of lax.scan (for tests).
  matched_margin (greedy mode; a scalar or [T], traced): the verdict is `matched` when the
  verify logits' matched - not_matched margin is >= it (that turn's), i.e. p(matched) >=
  sigmoid(margin) (a calibrated threshold, vsr_jax/calibration.py); None: the argmax (the same
  as margin 0).
  span_sharpen (greedy mode; a scalar, traced): the span prior's weight times this
  (Agent.act; a calibrated sharpness, vsr_jax/calibration.py); None: as trained.
  orig_query [B, E]: the engine's vectors of `tokens` when the caller has them (training reads
  them from the engine's view of the train split, computed once): not encoded again.
  """
  B = tokens.shape[0]
  T, N = spec.turns, spec.num_latents
  if orig_query is None:
    orig_query = engine.apply({"params": engine_params}, tokens, method=DualEncoder.encode_text)
  q0 = jax.lax.stop_gradient(orig_query)   # the engine is frozen; the original query is fixed
  F = corpus.features.shape[1]
  refiner = registry.REFINERS.get(spec.refine)

  def turn(carry, t):
    q, done, record, rejected = carry
    f_t = None if forced is None else jax.tree.map(lambda x: x[t], forced)
    if f_t is None:
      vid, rank, engine_rank = retrieve(corpus.index, jax.lax.stop_gradient(q), gt, rejected)
    else:   # replay: the recorded observations, no search
      vid, rank = f_t["retrieved"], jnp.zeros(B, jnp.int32)
      engine_rank = rank
      # The recorded query vector too: another policy's append projector would rebuild a
      # different one, and the log-probs must be of the same observations.
      q = f_t["query"]
    frames, nf, frame_seconds, duration = corpus.take(vid)
    view = engine_view(agent, engine, engine_params, frames,
                       q0 if spec.view_query == "original" else q)
    key = jax.random.fold_in(rng, t)
    out = agent.apply({"params": agent_params}, tokens, frames, nf, num_latents=N,
                      mode=spec.mode, sigma=spec.sigma, rng=jax.random.fold_in(key, 0),
                      forced=None if f_t is None else f_t["refine"], method=Agent.act,
                      span_sharpen=span_sharpen, **view)
    verify_lp = jax.nn.log_softmax(out["verify"])
    # p(matched)'s log-odds: the verdict at any threshold (calibration reads it).
    margin = out["verify"][:, MATCHED] - out["verify"][:, NOT_MATCHED]
    span_lp = jax.nn.log_softmax(out["span"].reshape(B, F * F))
    if spec.mode == "sample":
      verdict = jax.random.categorical(jax.random.fold_in(key, 1), out["verify"])
      span_flat = jax.random.categorical(jax.random.fold_in(key, 2), span_lp)
    elif spec.mode == "forced":
      verdict = f_t["verdict"]
      span_flat = f_t["span"][:, 0] * F + f_t["span"][:, 1]
    else:
      verdict = jnp.argmax(out["verify"], -1)
      if matched_margin is not None:
        # One margin for every turn, or one per turn ([T]: calibration's go-on and final).
        at = matched_margin if jnp.ndim(matched_margin) == 0 else matched_margin[t]
        verdict = jnp.where(margin >= at, MATCHED, NOT_MATCHED)
      span_flat = jnp.argmax(span_lp, -1)
    span = jnp.stack([span_flat // F, span_flat % F], -1)
    # Refinement: the next query vector from the original query plus the new tokens.
    soft, refine_lp, refine_action = refiner.episode(agent, engine, agent_params,
                                                     engine_params, out, spec.sigma)  # [B, N]
    active = ~done
    matched = verdict == MATCHED
    refines = active & ~matched & (t < T - 1) & (N > 0)
    if spec.mask_rejected:
      rejected = rejected.at[:, t].set(jnp.where(active & ~matched, vid, -1))

    def refine_and_search(_):
      q_next = engine.apply({"params": engine_params}, tokens, soft if N else None,
                            method=DualEncoder.encode_text)
      q_next = q_next.astype(q.dtype)     # both branches of the cond: the carry's dtype
      if f_t is not None:
        return q_next, rank
      _, next_rank, _ = retrieve(corpus.index, jax.lax.stop_gradient(q_next), gt, rejected)
      return q_next, next_rank

    # Only when some query refines: the last turn, and a batch whose queries all matched,
    # skip the engine's encoding and the search. Under vmap (GRPO's groups) a cond on batched
    # values runs both branches, so the last turn is also skipped on t, which vmap leaves alone.
    keep = lambda _: (q, rank)
    q_next, next_rank = jax.lax.cond(
        t < T - 1, lambda _: jax.lax.cond(refines.any(), refine_and_search, keep, None), keep,
        None)
    q_next = jnp.where(refines[:, None], q_next, q)
    now = {
        "retrieved": vid, "rank": rank, "engine_rank": engine_rank,
        "policy_rank": jnp.where(refines, next_rank, rank),
        "verdict": verdict, "span": span,
        "pred_time": span_to_seconds(span, frame_seconds, duration),
        "query": q,
    }
    record = jax.tree.map(lambda new, old: jnp.where(
        active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old), now, record)
    step = dict(record)
    step.update(
        active=active, refines=refines, grounds=active & matched,
        verify_margin=margin,
        verdict_logp=jnp.take_along_axis(verify_lp, verdict[:, None], -1)[:, 0],
        span_logp=jnp.take_along_axis(span_lp, span_flat[:, None], -1)[:, 0],
        refine_logp=refine_lp, refine_action=refine_action, next_query=q_next)
    return (q_next, done | (active & ~refines), record, rejected), step

  init_record = {
      "retrieved": jnp.zeros(B, jnp.int32), "rank": jnp.zeros(B, jnp.int32),
      "engine_rank": jnp.zeros(B, jnp.int32),
      "policy_rank": jnp.zeros(B, jnp.int32), "verdict": jnp.zeros(B, jnp.int32),
      "span": jnp.zeros((B, 2), jnp.int32), "pred_time": jnp.zeros((B, 2), jnp.float32),
      "query": q0,
  }
  # Videos rejected so far (slot t: turn t's, -1 if none); all empty without mask_rejected.
  rejected = jnp.full((B, T if spec.mask_rejected else 0), -1, jnp.int32)
  carry = (q0, jnp.zeros(B, bool), init_record, rejected)
  if unrolled:
    outs = []
    for t in range(T):
      carry, out = turn(carry, jnp.asarray(t))
      outs.append(out)
    q_final = carry[0]
    steps = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  else:
    (q_final, _, _, _), steps = jax.lax.scan(turn, carry, jnp.arange(T))
  steps["orig_query"] = q0
  steps["final_query"] = q_final
  return steps


def forced_actions(steps) -> dict:
  """The actions an episode took, in the form `episode(..., forced=)` replays."""
  return {"retrieved": steps["retrieved"], "query": steps["query"], "verdict": steps["verdict"],
          "span": steps["span"], "refine": steps["refine_action"]}
