"""A tokenised corpus as LM blocks per split, and the synthetic trigram corpus of Popov & Kudinov, Appendix A."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np
from etils import epath

from jaxtextgan.data import trigram as tg
from jaxtextgan.errors import InputError


@dataclasses.dataclass
class Corpus:
  """What the LM, the GAN and dfine take from a text source (PTB, text files, TFDS) or the trigram oracle.

  blocks: int32 (n, T+1) per split, [x_0..x_T]; a trigram block is one sentence [S, w_1..w_L]. From shards
    (`shard_corpus`) the train split is a `data.shards.ShardSplit` on disk instead.
  bos_id: the token a generated sequence starts after (end-of-sentence for text, the start token S for trigram).
  forbidden_ids: ids a generator must never emit (S). streams: the token stream per split (text sources).
  trigram: the TrigramLM (exact p) when synthetic, with its `sentences` and the test targets' exact `test_log_p`.
  """
  blocks: dict[str, np.ndarray]
  vocab_size: int
  tokenizer_spec: str
  bos_id: int = 0
  forbidden_ids: tuple[int, ...] = ()
  streams: dict[str, np.ndarray] | None = None
  tokenizer: Any = None
  trigram: Any = None
  sentences: dict[str, np.ndarray] | None = None
  test_log_p: np.ndarray | None = None  # log p(w_t | c_t) of every test target, (n, T)

  def decode(self, ids) -> str:
    if self.tokenizer is None:
      return " ".join(f"w{int(i)}" for i in ids)
    return self.tokenizer.decode(ids).replace("\n", " <eos> ").strip()

  def sentence(self, ids) -> list[int]:
    """A generated row as a sentence: up to its first end-of-sentence token (text); trigram rows are sentences."""
    ids = np.asarray(ids)
    if self.trigram is not None:
      return ids.tolist()
    cut = np.flatnonzero(ids == self.bos_id)
    return ids[:cut[0]].tolist() if cut.size else ids.tolist()

  def sentences_of(self, split: str) -> list[list[int]]:
    """Every sentence of `split` (without end-of-sentence tokens), e.g. BLEU's references."""
    if self.trigram is not None:
      return self.sentences[split].tolist()
    tokens = self.streams[split]
    out, start = [], 0
    for cut in np.flatnonzero(tokens == self.bos_id):
      if cut > start:
        out.append(tokens[start:cut].tolist())
      start = cut + 1
    return out

  def sentence_starts(self, split: str, length: int) -> np.ndarray:
    """int32 rows [bos, x_1..x_length] of real text that starts a sentence, as a generator's samples do (without a
    token stream, the blocks themselves: trigram sentences, or a dry run's placeholder)."""
    if hasattr(self.blocks[split], "sentence_starts"):  # shards on disk: a bounded sample of their blocks
      return self.blocks[split].sentence_starts(self.bos_id, length)
    if self.trigram is not None or self.streams is None:
      return self.blocks[split]
    tokens = self.streams[split]
    starts = np.flatnonzero(tokens[:-length] == self.bos_id)
    if starts.size == 0:
      raise InputError(f"the {split} split has no sentence of {length} tokens after an end-of-sentence token: use a "
                       "longer corpus or a smaller generator.length")
    return tokens[starts[:, None] + np.arange(length + 1)[None, :]].astype(np.int32)


def text_corpus(splits, tokenizer, seq_len: int, cache_dir: epath.Path | None) -> Corpus:
  """Text splits through a tokenizer into LM blocks (cached per tokenizer in `cache_dir`)."""
  from jaxtextgan.data import lm as lm_data
  blocks = lm_data.lm_blocks(splits, tokenizer, seq_len, cache_dir=cache_dir)
  eos = tokenizer.eos_id
  return Corpus(blocks={k: b.blocks for k, b in blocks.items()}, vocab_size=tokenizer.vocab_size,
                tokenizer_spec=tokenizer.spec, bos_id=0 if eos is None else eos,
                streams={k: b.tokens for k, b in blocks.items()}, tokenizer=tokenizer)


def shard_corpus(tokenizer, blocks: dict) -> Corpus:
  """The Corpus of `data.source='shards'` from `tasks.common.shard_data`'s (tokenizer, blocks): train stays a ShardSplit
  on disk; valid and test are LMBlocks read whole from their shards (small: perplexity, BLEU's references)."""
  eos = tokenizer.eos_id
  return Corpus(blocks={k: getattr(b, "blocks", b) for k, b in blocks.items()}, vocab_size=tokenizer.vocab_size,
                tokenizer_spec=tokenizer.spec, bos_id=0 if eos is None else eos,
                streams={k: b.tokens for k, b in blocks.items() if hasattr(b, "tokens")}, tokenizer=tokenizer)


def oracle_corpus(lm: tg.TrigramLM, sentences: dict[str, np.ndarray], spec: str,
                  test_log_p: np.ndarray | None = None) -> Corpus:
  """Sentences of the trigram LM `lm`, one block [S, w_1..w_L] each; G starts after S and never emits it."""
  start = lm.start_id
  blocks = {k: np.concatenate([np.full((len(v), 1), start, np.int32), np.asarray(v, np.int32)], axis=1)
            for k, v in sentences.items()}
  return Corpus(blocks=blocks, vocab_size=start + 1, tokenizer_spec=spec, bos_id=start, forbidden_ids=(start,),
                trigram=lm, sentences=sentences, test_log_p=test_log_p)


def trigram_corpus(dcfg, seq_len: int, cache_dir: epath.Path | None) -> Corpus:
  """Sentences of `dcfg`'s trigram LM, one block [S, w1..wL] per sentence, with the test set's exact log p.

  Cached as .npz in `cache_dir` (written by process 0), keyed by the language, the split sizes and the seed.
  """
  lm = tg.TrigramLM(seed=int(dcfg.trigram_seed), vocab_size=int(dcfg.trigram_vocab),
                    sentence_len=int(dcfg.sentence_len))
  if int(seq_len) != lm.sentence_len:
    raise InputError(f"data.seq_len={seq_len} differs from data.sentence_len={lm.sentence_len}: a trigram block "
                     "is one sentence, so set both to the same value")
  sizes = {"train": int(dcfg.train_sentences), "valid": int(dcfg.valid_sentences), "test": int(dcfg.test_sentences)}
  key = json.dumps([repr(lm), sizes, int(dcfg.corpus_seed)])
  path = None if cache_dir is None else cache_dir / f"trigram-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
  if path is not None and path.exists():
    with path.open("rb") as f, np.load(f) as z:
      sentences = {k: z[k] for k in sizes}
      test_log_p = z["test_log_p"]
  else:
    sentences = lm.corpus(seed=int(dcfg.corpus_seed), sizes=sizes)
    test_log_p = lm.log_prob(sentences["test"])
    if path is not None and jax.process_index() == 0:
      path.parent.mkdir(parents=True, exist_ok=True)
      with path.open("wb") as f:
        np.savez(f, test_log_p=test_log_p, **sentences)
  return oracle_corpus(lm, sentences, f"trigram:{lm!r}", test_log_p)
