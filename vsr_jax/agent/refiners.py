"""Query refiners by name (config.agent.refine, eval.rows.<row>.refine): how an agent's
refinement outputs become the tokens appended to the original query inside the frozen engine.

A refiner names the agent head whose outputs it reads (`head`: 'sqr' - Gaussian latents
`out['mean']`/`out['action']`; 'hqr' - categorical words `out['logits']`/`out['words']`;
vsr_jax/agent/policy.py) and turns them into soft tokens [B, N, D] for the engine's text tower:
  episode(...) -> (soft tokens, log-prob of each of the N actions [B, N], the actions), used by
      the rollout (vsr_jax/rollout.py);
  train_tokens(...) -> differentiable soft tokens, used by the supervised stage's retrieval loss.
A new refiner is one file that registers an instance (`registry.REFINERS.register(name, ...)`),
imported through config.imports.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vsr_jax import registry
from vsr_jax.agent.policy import Agent
from vsr_jax.engine.towers import DualEncoder


def gaussian_logp(action, mean, sigma):
  """Per-latent log-probability as in the reference: -mean_d (a - mu)^2 / (2 sigma^2)."""
  return -jnp.mean(jnp.square(action - mean), axis=-1) / (2.0 * sigma ** 2)


class SoftQueryRefinement:
  """SQR (METHOD.md §2): append_projector(latents), a Gaussian policy on the latents."""
  head = "sqr"

  def episode(self, agent, engine, agent_params, engine_params, out, sigma):
    soft = agent.apply({"params": agent_params}, out["action"], method=Agent.soft_tokens)
    return soft, gaussian_logp(out["action"], out["mean"], sigma), out["action"]

  def train_tokens(self, agent, engine, agent_params, engine_params, out):
    return agent.apply({"params": agent_params}, out["action"], method=Agent.soft_tokens)


class HardQueryRefinement:
  """HQR: N discrete words, appended as the engine's own word vectors."""
  head = "hqr"

  def episode(self, agent, engine, agent_params, engine_params, out, sigma):
    del agent, agent_params, sigma
    soft = engine.apply({"params": engine_params}, out["words"], method=DualEncoder.word_vectors)
    logp = jnp.take_along_axis(jax.nn.log_softmax(out["logits"]), out["words"][..., None],
                               -1)[..., 0]
    return soft, logp, out["words"]

  def train_tokens(self, agent, engine, agent_params, engine_params, out):
    """The chosen words' vectors with a straight-through gradient through the distribution
    (the forward pass uses the argmax words)."""
    del agent, agent_params
    probs = jax.nn.softmax(out["logits"])
    onehot = jax.nn.one_hot(out["words"], probs.shape[-1])
    weights = onehot + probs - jax.lax.stop_gradient(probs)
    table = engine.apply({"params": engine_params}, jnp.arange(probs.shape[-1]),
                         method=DualEncoder.word_vectors)
    return weights @ table


registry.REFINERS.register("sqr", SoftQueryRefinement())
registry.REFINERS.register("hqr", HardQueryRefinement())
