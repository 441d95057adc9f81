"""Pieces every task's `run(config, workdir)` shares: workdir, mesh, tokenizer and LM data from the config."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxtextgan import prepare
from jaxtextgan import sharding as shd
from jaxtextgan import tokenizers as tok
from jaxtextgan import writers
from jaxtextgan.data import corpus
from jaxtextgan.data import lm as lm_data
from jaxtextgan.data import shards
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2



@dataclasses.dataclass
class Run:
  """What a task needs about where and how it runs (`workdir`: local or a bucket, `writers.workdir_path`)."""
  workdir: epath.Path
  mesh: Any
  writer: writers.MetricWriter
  config: ml_collections.ConfigDict

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


def start(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Run:
  """Checks the workdir is writable, builds the mesh once and writes config.json."""
  path = writers.ensure_workdir(workdir)
  mesh = shd.make_mesh(tuple(config.mesh_shape))
  if jax.process_index() == 0:
    (path / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n", encoding="utf-8")
  return Run(workdir=path, mesh=mesh, writer=writers.MetricWriter(path), config=config)


def text_splits(data_cfg) -> dict:
  """Raw text splits for `data.source` in {ptb, text, tfds}."""
  source = data_cfg.source
  if source == "ptb":
    return lm_data.ptb_splits()
  if source == "text":
    return lm_data.text_file_splits(data_cfg.train_file, data_cfg.get("valid_file") or None,
                                    data_cfg.get("test_file") or None)
  if source == "tfds":
    return lm_data.tfds_splits(data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.get("text_key", "text"))
  raise InputError(f"data.source={source!r} is unknown: use 'ptb', 'text', 'tfds' or 'shards'")


def text_corpus(workdir, cfg, tokenizer: tok.Tokenizer | None = None) -> corpus.Corpus:
  """The Corpus of a text `cfg.data.source` for a run in `workdir`: ptb / text / tfds read whole and tokenized by
  `tokenizer` (else the workdir's, or a new one from cfg.tokenizer); 'shards' as `shard_data` opens them:
  the train split stays on disk, read through Grain, while valid and test are read whole from their shards (they
  are small, and perplexity and BLEU's references need them in memory)."""
  if cfg.data.source == "shards":
    return corpus.shard_corpus(*shard_data(cfg, Run(workdir, None, None, cfg)))
  splits = text_splits(cfg.data)
  tokenizer = tokenizer or tokenizer_for(workdir, cfg.tokenizer.spec, splits["train"],
                                         cfg.tokenizer.get("vocab_size") or None)
  return corpus.text_corpus(splits, tokenizer, cfg.data.seq_len, cache_dir(workdir))


def cache_dir(workdir) -> epath.Path:
  """<workdir>/cache for tokenized text and the trigram corpus (local or gs://, through epath)."""
  return writers.workdir_path(workdir) / "cache"


def train_batches(blocks, batch_size: int, seed: int):
  """This process's endless, resumable batches of train `blocks`: in memory, or a ShardSplit read through Grain."""
  if hasattr(blocks, "batch_iterator"):
    return blocks.batch_iterator(batch_size, seed, jax.process_index(), jax.process_count())
  return lm_data.BatchIterator(blocks, batch_size, seed=seed, process_index=jax.process_index(),
                               process_count=jax.process_count())


def target_counts(blocks, vocab_size: int) -> np.ndarray:
  """Occurrences of each id among the targets of train `blocks`: counted in memory, or streamed from shards."""
  if hasattr(blocks, "token_counts"):
    return blocks.token_counts(vocab_size)
  return np.bincount(blocks[:, 1:].ravel(), minlength=vocab_size)


def read_blocks(blocks, rows) -> np.ndarray:
  """Blocks `rows` of train `blocks`, in memory or read from shards."""
  return blocks.read(rows) if hasattr(blocks, "read") else blocks[rows]


def tokenizer_for(run_dir, spec: str, train_text, vocab_size: int | None = None) -> tok.Tokenizer:
  """The workdir's saved tokenizer when resuming, else a new one from `spec`, saved to <workdir>/tokenizer."""
  saved = epath.Path(run_dir) / "tokenizer"
  if saved.is_dir():
    return load_tokenizer_dir(saved)
  tokenizer = tok.build_tokenizer(spec, corpus_text=train_text, vocab_size=vocab_size)
  save_tokenizer_dir(tokenizer, saved)
  return tokenizer


def load_tokenizer_dir(directory) -> tok.Tokenizer:
  """A saved tokenizer, local or in a bucket (`tokenizers` reads local folders: a bucket's files are copied to a
  local temporary folder first)."""
  if writers.is_local(directory):
    return tok.load_tokenizer(directory)
  with tempfile.TemporaryDirectory() as tmp:
    return tok.load_tokenizer(prepare.copy_tokenizer(epath.Path(directory), tmp))


def save_tokenizer_dir(tokenizer: tok.Tokenizer, directory) -> None:
  """Saves `tokenizer` to `directory`, local or in a bucket, from process 0 only."""
  if jax.process_index() != 0:
    return
  if writers.is_local(directory):
    tokenizer.save(directory)
    return
  with tempfile.TemporaryDirectory() as tmp:
    prepare.copy_tokenizer(tokenizer.save(tmp), epath.Path(directory))


def build_tokenizer(config, splits=None) -> tok.Tokenizer:
  """The tokenizer a run would build from the training text, or the shards' one, without a workdir (dry runs)."""
  if config.data.source == "shards":
    return shard_data(config)[0]
  splits = text_splits(config.data) if splits is None else splits
  return tok.build_tokenizer(config.tokenizer.spec, corpus_text=splits["train"],
                             vocab_size=config.tokenizer.get("vocab_size") or None)


def lm_blocks(run: Run, data_cfg, tokenizer: tok.Tokenizer, splits=None) -> dict[str, lm_data.LMBlocks]:
  splits = text_splits(data_cfg) if splits is None else splits
  return lm_data.lm_blocks(splits, tokenizer, data_cfg.seq_len, cache_dir=cache_dir(run.workdir))


def model_config(model_cfg, vocab_size: int) -> gpt2.GPT2Config:
  """GPT2Config from the config's `model` block; vocab_size 0 means 'from the tokenizer'."""
  fields = dict(model_cfg)
  if not fields.get("vocab_size"):
    fields["vocab_size"] = vocab_size
  try:
    return gpt2.GPT2Config(**fields)
  except (TypeError, ValueError) as err:
    raise InputError(f"model config is invalid: {err}") from None


def check_seq_len(seq_len: int, model_cfg: gpt2.GPT2Config) -> None:
  if seq_len > model_cfg.max_len:
    raise InputError(f"data.seq_len={seq_len} is longer than model.max_len={model_cfg.max_len}: "
                     "lower data.seq_len or raise model.max_len")


def check_same_model(meta: dict, model_cfg: gpt2.GPT2Config, workdir: pathlib.Path) -> None:
  """A resumed checkpoint must come from the same architecture."""
  saved = meta.get("model")
  if saved is not None and saved != dataclasses.asdict(model_cfg):
    diff = sorted(k for k in set(saved) | set(dataclasses.asdict(model_cfg))
                  if saved.get(k) != dataclasses.asdict(model_cfg).get(k))
    raise InputError(f"workdir {workdir} holds a checkpoint of another model (differs in {', '.join(diff)}): "
                     "use a new --workdir or the config it was trained with")


def finished_results(run: Run, steps_key: str, steps: int, summary) -> dict | None:
  """The workdir's results.json when it records a finished run of `steps` (under `steps_key`), printed with
  `summary`; None when the run still has work to do."""
  path = run.workdir / "results.json"
  if not path.exists():
    return None
  previous = json.loads(path.read_text())
  if not (previous.get("finished") and previous.get(steps_key) == steps):
    return None
  print(f"{run.workdir} holds a finished run; its results:", flush=True)
  print(summary(previous), flush=True)
  return previous


def shard_data(config, run: Run | None = None):
  """(tokenizer, {train: ShardSplit, valid/test: LMBlocks in memory}) of `data.source='shards'`: the manifest must
  match tokenizer.spec and data.seq_len; the tokenizer comes from the shards (and is saved in the workdir)."""
  d = config.data
  if not d.get("shards_dir"):
    raise InputError("data.source='shards' needs data.shards_dir: the --out of python -m jaxtextgan.prepare")
  manifest = shards.read_manifest(d.shards_dir)
  shards.check_manifest(manifest, d.shards_dir, config.tokenizer.spec, d.seq_len)
  saved = run.workdir / "tokenizer" if run is not None else None
  if saved is not None and saved.is_dir():
    tokenizer = load_tokenizer_dir(saved)
    if tokenizer.spec != manifest["tokenizer"]["spec"]:
      raise InputError(f"workdir {run.workdir} was trained with tokenizer {tokenizer.spec}, but the shards in "
                       f"{d.shards_dir} use {manifest['tokenizer']['spec']}: use a new --workdir")
  else:
    tokenizer = load_tokenizer_dir(epath.Path(d.shards_dir) / prepare.TOKENIZER_DIR)
    if saved is not None:
      save_tokenizer_dir(tokenizer, saved)
  blocks = {"train": shards.ShardSplit(d.shards_dir, "train", manifest, workers=d.get("workers", 0))}
  for split in ("valid", "test"):
    if split in manifest["splits"]:
      blocks[split] = shards.ShardSplit(d.shards_dir, split, manifest).load()
  return tokenizer, blocks
