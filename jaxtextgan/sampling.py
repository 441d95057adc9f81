"""Batched autoregressive sampling with a KV cache inside `lax.scan`: temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def filter_logits(logits_BV: Array, temperature: float | Array, top_k: int = 0, top_p: float | Array = 1.0) -> Array:
  """Scaled and truncated logits: logits/T, keep the top_k largest (0 = all) and the smallest set of mass >= top_p."""
  logits_BV = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  neg = jnp.finfo(jnp.float32).min
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, neg, logits_BV)
  sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
  cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
  # The first token is always kept; a token is kept if the mass strictly before it is < top_p.
  keep_sorted_BV = (cum_BV - jax.nn.softmax(sorted_BV, axis=-1)) < top_p
  keep_sorted_BV = keep_sorted_BV.at[:, 0].set(True)
  cutoff_B1 = jnp.min(jnp.where(keep_sorted_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BV < cutoff_B1, neg, logits_BV)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k"))
def sample(graphdef, params, prompt_BP: Array, key: Array, *, max_new_tokens: int, temperature=1.0, top_k: int = 0,
           top_p=1.0) -> Array:
  """Draws (B, max_new_tokens) continuations of `prompt_BP` (at least one token, e.g. end-of-text)."""
  model = nnx.merge(graphdef, params)
  batch, prompt_len = prompt_BP.shape
  cache = model.init_cache(batch, prompt_len + max_new_tokens)
  logits_BPV, cache = model(prompt_BP, cache=cache, cache_index=0)

  def draw(logits_BV, step_key):
    return jax.random.categorical(step_key, filter_logits(logits_BV, temperature, top_k, top_p), axis=-1)

  keys = jax.random.split(key, max_new_tokens)
  first_B = draw(logits_BPV[:, -1], keys[0])

  def step(carry, xs):
    token_B, cache = carry
    index, step_key = xs
    logits_B1V, cache = model(token_B[:, None], cache=cache, cache_index=index)
    next_B = draw(logits_B1V[:, 0], step_key)
    return (next_B, cache), next_B

  indices = prompt_len + jnp.arange(max_new_tokens - 1)
  _, rest_NB = jax.lax.scan(step, (first_B, cache), (indices, keys[1:]))
  return jnp.concatenate([first_B[:, None], rest_NB.T], axis=1).astype(jnp.int32)
