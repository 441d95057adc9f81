"""GPT-2 decoder (Radford et al. 2019) with the Gopher options (Rae et al. 2021): RMSNorm and relative positions.

By default (`scan_layers=True`) the blocks are stacked on a leading 'layers' axis and run with `lax.scan`, so
compile time does not grow with depth and `remat` applies one checkpoint policy to every layer. With
`scan_layers=False` every block owns its parameters (`blocks/0`, `blocks/1`, ...) and the layers are unrolled:
slower to compile, but faster per step on XLA:CPU, where a scanned body copies its weight slices and zero-fills
the stacked gradients (results/perf.md). `stack_layers` / `unstack_layers` convert params between the two.

Inputs are token ids (B, T) or soft one-hot probabilities (B, T, V), embedded as probs @ E so that a Gumbel-Softmax
generator can be differentiated through (GAN seed, eq. 6). A KV cache of fixed length lets sampling run inside
`lax.scan`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan import sharding as shd
from jaxtextgan.models import layers

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(name_or_dtype) -> Any:
  if isinstance(name_or_dtype, str):
    if name_or_dtype not in _DTYPES:
      raise ValueError(f"unknown dtype {name_or_dtype!r}: use one of {sorted(_DTYPES)}")
    return _DTYPES[name_or_dtype]
  return name_or_dtype


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """Model hyper-parameters; `norm` in {layernorm, rmsnorm}, `position` in {learned, relative}; `scan_layers`: see
  the module docstring."""
  vocab_size: int = 50257
  max_len: int = 1024
  n_layer: int = 12
  d_model: int = 768
  n_head: int = 12
  d_ff: int = 3072
  dropout: float = 0.1
  tie_embeddings: bool = True
  output_bias: bool = False
  norm: str = "layernorm"
  position: str = "learned"
  norm_eps: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = True
  loss_chunk: int = 0  # > 0: the LM loss makes logits this many positions at a time (losses.chunked_cross_entropy)

  def __post_init__(self):
    if self.d_model % self.n_head:
      raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
    if self.norm not in ("layernorm", "rmsnorm"):
      raise ValueError(f"norm={self.norm!r}: use 'layernorm' or 'rmsnorm'")
    if self.position not in ("learned", "relative"):
      raise ValueError(f"position={self.position!r}: use 'learned' or 'relative'")
    if self.loss_chunk < 0:
      raise ValueError(f"loss_chunk={self.loss_chunk} is negative: use 0 (whole sequence) or a divisor of seq_len")
    as_dtype(self.dtype), as_dtype(self.param_dtype)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_head

  def replace(self, **kwargs) -> "GPT2Config":
    return dataclasses.replace(self, **kwargs)


def train_flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
  """Training FLOPs per token of a decoder LM: 6N for the weights plus 12*L*d*T for attention (Kaplan et al.)."""
  return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


PRESETS: dict[str, dict[str, Any]] = {
  # GPT-2 small and the 24-layer "deep" model of the GAN seed's Table 1 (GPT-2 medium width).
  "gpt2_small": dict(n_layer=12, d_model=768, n_head=12, d_ff=3072),
  "gpt2_24l": dict(n_layer=24, d_model=1024, n_head=16, d_ff=4096),
  # Same depths at a width a 2-core CPU trains in minutes.
  "cpu_12l": dict(n_layer=12, d_model=128, n_head=4, d_ff=512, max_len=256),
  "cpu_24l": dict(n_layer=24, d_model=128, n_head=4, d_ff=512, max_len=256),
  "tiny": dict(n_layer=2, d_model=32, n_head=2, d_ff=64, max_len=64),
}


def preset(name: str, **overrides) -> GPT2Config:
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
  return GPT2Config(**{**PRESETS[name], **overrides})


class Attention(nnx.Module):
  """Causal multi-head attention. With `position='relative'` the score is Transformer-XL's (Dai et al. 2019)

    a_ij = (q_i + u)·k_j + (q_i + v)·W_r r_{i-j},

  with r_d a sinusoid of the distance d = i - j; u, v are learned per head.
  """

  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    h, dh, d = cfg.n_head, cfg.head_dim, cfg.d_model
    dense = lambda i, o, ia, oa, **kw: layers.Dense(i, o, in_axes=ia, out_axes=oa, dtype=dtype, param_dtype=pdtype,
                                                    rngs=rngs, **kw)
    self.query = dense(d, (h, dh), "embed", ("heads", "head_dim"))
    self.key = dense(d, (h, dh), "embed", ("heads", "head_dim"))
    self.value = dense(d, (h, dh), "embed", ("heads", "head_dim"))
    self.out = dense((h, dh), d, ("heads", "head_dim"), "embed",
                     kernel_init=nnx.initializers.normal(layers.init_scale_for_residual(cfg.n_layer)))
    self.relative = cfg.position == "relative"
    self.max_len = cfg.max_len
    self.d_model = d
    if self.relative:
      self.rel = dense(d, (h, dh), "embed", ("heads", "head_dim"), use_bias=False)
      self.content_bias = layers.param(rngs, nnx.initializers.zeros, (h, dh), pdtype, ("heads", "head_dim"))
      self.position_bias = layers.param(rngs, nnx.initializers.zeros, (h, dh), pdtype, ("heads", "head_dim"))
    self.dropout = cfg.dropout
    self.dtype = dtype

  def _qkv(self, x_BTD: Array) -> tuple[Array, Array, Array]:
    """q, k, v = x Wq + bq, x Wk + bk, x Wv + bv as one (D, 3, H, K) matmul: a 3x wider GEMM runs nearer the
    CPU's matmul peak than three narrow ones, forward and backward (the kernels stay separate parameters)."""
    dense = (self.query, self.key, self.value)
    kernel = jnp.stack([d.kernel[...] for d in dense], axis=1)
    y = layers.contract(x_BTD, kernel, (0,), self.dtype, jnp.stack([d.bias[...] for d in dense]))
    return y[:, :, 0], y[:, :, 1], y[:, :, 2]

  def __call__(self, x_BTD: Array, q_pos_T: Array, k_pos_S: Array, *, cache: dict | None, cache_index,
               dropout_key: Array | None):
    q_BTHK, k_BTHK, v_BTHK = self._qkv(x_BTD)
    if cache is not None:
      # Fixed-size cache: write this chunk at cache_index; positions past the written ones are masked below.
      k_BSHK = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BTHK.astype(cache["k"].dtype), cache_index, 1)
      v_BSHK = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BTHK.astype(cache["v"].dtype), cache_index, 1)
      cache = {"k": k_BSHK, "v": v_BSHK}
    else:
      k_BSHK, v_BSHK = k_BTHK, v_BTHK
    scale = q_BTHK.shape[-1] ** -0.5
    if self.relative:
      u_HK = self.content_bias[...].astype(self.dtype)
      w_HK = self.position_bias[...].astype(self.dtype)
      logits_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK + u_HK, k_BSHK.astype(self.dtype))
      dist_TS = jnp.clip(q_pos_T[:, None] - k_pos_S[None, :], 0, self.max_len - 1)
      r_RHK = self.rel(layers.sinusoid_table(jnp.arange(self.max_len), self.d_model).astype(self.dtype))
      by_dist_BHTR = jnp.einsum("bthk,rhk->bhtr", q_BTHK + w_HK, r_RHK)
      idx = jnp.broadcast_to(dist_TS, by_dist_BHTR.shape[:2] + dist_TS.shape)
      logits_BHTS = logits_BHTS + jnp.take_along_axis(by_dist_BHTR, idx, axis=-1)
    else:
      logits_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK.astype(self.dtype))
    logits_BHTS = logits_BHTS.astype(jnp.float32) * scale
    causal_TS = k_pos_S[None, :] <= q_pos_T[:, None]
    logits_BHTS = jnp.where(causal_TS, logits_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(logits_BHTS, axis=-1).astype(self.dtype)
    probs_BHTS = layers.dropout(probs_BHTS, self.dropout, dropout_key)
    out_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS, v_BSHK.astype(self.dtype))
    return self.out(out_BTHK), cache


class MLP(nnx.Module):
  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    self.fc = layers.Dense(cfg.d_model, cfg.d_ff, in_axes="embed", out_axes="mlp", dtype=dtype,
                           param_dtype=pdtype, rngs=rngs)
    self.proj = layers.Dense(cfg.d_ff, cfg.d_model, in_axes="mlp", out_axes="embed", dtype=dtype,
                             param_dtype=pdtype, rngs=rngs,
                             kernel_init=nnx.initializers.normal(layers.init_scale_for_residual(cfg.n_layer)))

  def __call__(self, x_BTD: Array) -> Array:
    return self.proj(layers.gelu_tanh(self.fc(x_BTD)))


class Block(nnx.Module):
  """Pre-norm residual block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
    pdtype = as_dtype(cfg.param_dtype)
    self.norm_attn = layers.make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, param_dtype=pdtype, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm_mlp = layers.make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, param_dtype=pdtype, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    self.dropout = cfg.dropout

  def __call__(self, x_BTD, q_pos_T, k_pos_S, *, cache, cache_index, dropout_key):
    keys = jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
    h, cache = self.attn(self.norm_attn(x_BTD), q_pos_T, k_pos_S, cache=cache, cache_index=cache_index,
                         dropout_key=keys[0])
    x_BTD = x_BTD + layers.dropout(h, self.dropout, keys[1])
    x_BTD = x_BTD + layers.dropout(self.mlp(self.norm_mlp(x_BTD)), self.dropout, keys[2])
    return x_BTD, cache


class GPT2(nnx.Module):
  """logits_BTV = GPT2(ids_BT or probs_BTV)."""

  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    self.wte = layers.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    if cfg.position == "learned":
      self.wpe = layers.param(rngs, nnx.initializers.normal(0.01), (cfg.max_len, cfg.d_model), pdtype,
                              (None, "embed"))

    if cfg.scan_layers:
      self.blocks = layers.stacked(lambda r: Block(cfg, rngs=r), cfg.n_layer, rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
    self.norm_f = layers.make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, param_dtype=pdtype, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Dense(cfg.d_model, cfg.vocab_size, in_axes="embed", out_axes="vocab", use_bias=False,
                                  dtype=dtype, param_dtype=pdtype, rngs=rngs)
    if cfg.output_bias:
      self.out_bias = layers.param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), pdtype, ("vocab",))

  def embed(self, inputs: Array, positions_T: Array, dropout_key: Array | None = None) -> Array:
    """x_BTD from ids (B,T) or soft tokens (B,T,V); learned positions are added here."""
    x_BTD = self.wte(inputs)
    if self.cfg.position == "learned":
      x_BTD = x_BTD + jnp.take(self.wpe[...], positions_T, axis=0).astype(x_BTD.dtype)
    return layers.dropout(x_BTD, self.cfg.dropout, dropout_key)

  def backbone(self, x_BTD: Array, positions_T: Array, *, cache: dict | None = None, cache_index=0,
               dropout_key: Array | None = None):
    """Runs the blocks (`lax.scan` or unrolled); returns (final-normed hidden, updated cache or None)."""
    cfg = self.cfg
    if cache is not None:
      k_pos_S = jnp.arange(cache["k"].shape[2])
    else:
      k_pos_S = positions_T
    use_dropout = dropout_key is not None
    # The same per-layer keys in both layouts, so scanned and unrolled models compute the same function.
    layer_keys = (jax.random.split(dropout_key, cfg.n_layer) if use_dropout
                  else jnp.zeros((cfg.n_layer,), jnp.uint32))

    def apply(graphdef, x, state, key, layer_cache):
      block = nnx.merge(graphdef, state)
      return block(x, positions_T, k_pos_S, cache=layer_cache, cache_index=cache_index,
                   dropout_key=key if use_dropout else None)

    if cfg.remat:
      apply = jax.checkpoint(apply, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False,
                             static_argnums=(0,))
    x_BTD = shd.constrain_batch(x_BTD)
    if cfg.scan_layers:
      graphdef, block_state = nnx.split(self.blocks)

      def body(x, xs):
        state, key, layer_cache = xs
        x, layer_cache = apply(graphdef, x, state, key, layer_cache)
        return shd.constrain_batch(x), layer_cache

      x_BTD, new_cache = jax.lax.scan(body, x_BTD, (block_state, layer_keys, cache))
      return self.norm_f(x_BTD), new_cache
    for i, block in enumerate(self.blocks):
      graphdef, state = nnx.split(block)
      layer_cache = None if cache is None else {name: c[i] for name, c in cache.items()}
      x_BTD = _layer_boundary(x_BTD)
      x_BTD, layer_cache = apply(graphdef, x_BTD, state, layer_keys[i], layer_cache)
      x_BTD = shd.constrain_batch(x_BTD)
      if cache is not None:  # written in place into the (L, B, S, H, K) cache: no per-step re-stacking
        cache = {name: cache[name].at[i].set(c) for name, c in layer_cache.items()}
    return self.norm_f(x_BTD), cache

  def logits(self, h_BTD: Array) -> Array:
    if self.cfg.tie_embeddings:
      logits_BTV = self.wte.attend(h_BTD)
    else:
      logits_BTV = self.lm_head(h_BTD)
    logits_BTV = logits_BTV.astype(jnp.float32)
    if self.cfg.output_bias:
      logits_BTV = logits_BTV + self.out_bias[...].astype(jnp.float32)
    return logits_BTV

  def hidden(self, inputs: Array, *, positions_T: Array | None = None, dropout_key: Array | None = None,
             cache: dict | None = None, cache_index=0):
    """(final-normed hidden states (B,T,D), new cache or None): `__call__` without the output projection."""
    t = inputs.shape[1]
    if positions_T is None:
      positions_T = cache_index + jnp.arange(t)
    if cache is None and t > self.cfg.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len={self.cfg.max_len}")
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    x_BTD = self.embed(inputs, positions_T, keys[0])
    return self.backbone(x_BTD, positions_T, cache=cache, cache_index=cache_index, dropout_key=keys[1])

  def __call__(self, inputs: Array, *, positions_T: Array | None = None, dropout_key: Array | None = None,
               cache: dict | None = None, cache_index=0, return_hidden: bool = False):
    """Returns fp32 logits (B,T,V), and the new cache when one is given.

    `cache_index` is where this chunk starts in the cache; positions default to cache_index + arange(T).
    """
    h_BTD, new_cache = self.hidden(inputs, positions_T=positions_T, dropout_key=dropout_key, cache=cache,
                                   cache_index=cache_index)
    logits_BTV = self.logits(h_BTD)
    out = (logits_BTV, h_BTD) if return_hidden else logits_BTV
    if cache is not None:
      return out, new_cache
    return out

  def init_cache(self, batch_size: int, length: int, dtype=None) -> dict:
    """Zeroed per-layer keys and values: (L, B, S, H, K)."""
    cfg = self.cfg
    if length > cfg.max_len:
      raise ValueError(f"cache length {length} exceeds max_len={cfg.max_len}")
    shape = (cfg.n_layer, batch_size, length, cfg.n_head, cfg.head_dim)
    dtype = dtype or as_dtype(cfg.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


@jax.custom_vjp
def _layer_boundary(x: Array) -> Array:
  """Identity that stops XLA from fusing the residual-stream gradient across unrolled layers.

  The backward residual stream dx_l = dx_{l+1} + (block l's input gradient) is a chain of elementwise adds. XLA:CPU
  fuses that chain into each of its consumers, so every layer recomputes all later layers' norm and dropout
  backward (O(L^2) work: 27% of a GPT-2-small step, and twice the compile time). XLA:CPU drops optimization
  barriers before fusion, so on CPU the cotangent passes a `lax.cond` instead: a fusion boundary whose predicate
  (the cotangent's first element equals itself) is unknown at compile time. It returns the cotangent unchanged, or
  all NaN when its first element is already NaN (identical branches would be folded away). Other backends
  keep their fusion heuristics behind an optimization barrier, which costs nothing and syncs nothing.
  """
  return x


def _layer_boundary_fwd(x):
  return x, None


def _layer_boundary_bwd(_, g):
  if jax.default_backend() != "cpu":
    return (jax.lax.optimization_barrier(g),)
  first = g.reshape(-1)[0]
  return (jax.lax.cond(first == first, lambda g: g, lambda g: jnp.full_like(g, jnp.nan), g),)


_layer_boundary.defvjp(_layer_boundary_fwd, _layer_boundary_bwd)


def _is_layer_index(key) -> bool:
  return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


def stack_layers(params: dict, n_layer: int) -> dict:
  """Unrolled-layout params (`blocks/i/...`) -> scanned layout (`blocks/...` with a leading layer axis).

  Both sides are pure nested dicts of arrays (`nnx.to_pure_dict(state)`; apply with `nnx.replace_by_pure_dict`).
  """
  if not isinstance(params.get("blocks"), dict) or not all(map(_is_layer_index, params["blocks"])):
    raise ValueError("params are not in the unrolled layout (blocks/0, blocks/1, ...): nothing to stack")
  per_layer = {int(i): block for i, block in params["blocks"].items()}
  if sorted(per_layer) != list(range(n_layer)):
    raise ValueError(f"params hold layers {sorted(per_layer)}, expected 0..{n_layer - 1}")
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[per_layer[i] for i in range(n_layer)])
  return {**params, "blocks": stacked}


def unstack_layers(params: dict, n_layer: int) -> dict:
  """Scanned-layout params -> unrolled layout (`blocks/0/...`, `blocks/1/...`); inverse of `stack_layers`."""
  blocks = params.get("blocks")
  leaves = jax.tree.leaves(blocks)
  if not leaves or any(x.shape[:1] != (n_layer,) for x in leaves):
    raise ValueError(f"params are not in the scanned layout (blocks with a leading axis of {n_layer} layers)")
  return {**params, "blocks": {i: jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(n_layer)}}


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
