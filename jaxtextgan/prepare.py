"""Tokenize a corpus once into ArrayRecord shards of fixed-length token blocks (`data.source='shards'`).

python -m jaxtextgan.prepare --out=DIR --tokenizer=gpt2 --seq_len=1024 --train=PATH [--valid=PATH] [--test=PATH]
python -m jaxtextgan.prepare --out=DIR --tokenizer=gpt2 --seq_len=1024 --tfds_name=NAME --tfds_data_dir=DIR

A PATH is a text file, a directory (its files, recursively, sorted) or a comma-separated list of either. Each input
is cut into work units (a byte range of a text file, ending at a line boundary; a range of TFDS documents) of about
`--shard_mb`; each unit streams into one shard `<split>/<split>-NNNNN.array_record` of records that are
`seq_len + 1` int32 tokens (little-endian), the ragged tail of a unit dropped. Units run in `--workers` processes;
a finished shard gets a `.done` marker and is never redone, so running the same command again resumes. Memory
stays flat: a worker holds about one MiB of text and one shard's writer at a time. `manifest.json` records the
tokenizer (saved in `tokenizer/`), the block length and the token and block counts per split and shard.
Paths go through `etils.epath`, so `gs://` outputs and inputs work.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
import tempfile

import numpy as np
from etils import epath

from jaxtextgan import tokenizers as tok
from jaxtextgan.errors import InputError, exit_status

FORMAT = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
RECORD_OPTIONS = "group_size:1,uncompressed"  # one block per chunk: cheap random access for a global shuffle
_TEXT_CHUNK = 1 << 20  # bytes of text tokenized at a time
_TOKENIZERS: dict = {}  # a worker's tokenizer, loaded once per output directory


# --- work units -------------------------------------------------------------------------------------------------


def text_files(spec: str) -> list[epath.Path]:
  """The files of a comma-separated list of files and directories (directories recursively, sorted)."""
  out = []
  for part in (p for p in spec.split(",") if p):
    path = epath.Path(part)
    if path.is_dir():
      files = sorted(epath.Path(root) / name for root, _, names in path.walk() for name in names)
      if not files:
        raise InputError(f"directory {part} holds no files: give a directory of UTF-8 text files")
      out.extend(files)
    elif path.is_file():
      out.append(path)
    else:
      raise InputError(f"text file {part} does not exist: check the path")
  return out


def text_units(split: str, spec: str, shard_bytes: int) -> list[dict]:
  """Work units of a split's text files: byte ranges of about `shard_bytes` (a range ends at a line end)."""
  units = []
  for path in text_files(spec):
    size = path.stat().length
    if size == 0:
      raise InputError(f"text file {path} is empty: give files that contain text")
    starts = list(range(0, size, shard_bytes))
    for i, start in enumerate(starts):
      end = starts[i + 1] if i + 1 < len(starts) else size
      units.append(dict(split=split, kind="text", source=os.fspath(path), start=start, end=end, size=size))
  return units


def tfds_units(name: str, data_dir: str, text_key: str, docs_per_shard: int) -> list[dict]:
  """Work units of a prepared TFDS dataset (array_record format): ranges of `docs_per_shard` documents."""
  from jaxtextgan.data import lm as lm_data  # pylint: disable=import-outside-toplevel
  units = []
  for ours, (tfds_split, source) in lm_data.tfds_sources(name, data_dir, text_key).items():
    n = len(source)
    for start in range(0, n, docs_per_shard):
      units.append(dict(split=ours, kind="tfds", source=f"{name}/{tfds_split}", name=name, tfds_split=tfds_split,
                        data_dir=os.fspath(data_dir), text_key=text_key, start=start,
                        end=min(n, start + docs_per_shard)))
  return units


def _shard_paths(units: list[dict]) -> None:
  counts: dict[str, int] = {}
  for u in units:
    i = counts[u["split"]] = counts.get(u["split"], -1) + 1
    u["shard"] = f"{u['split']}/{u['split']}-{i:05d}.array_record"


# --- one shard --------------------------------------------------------------------------------------------------


def _text_pieces(unit: dict):
  """(byte offset, text) pieces of about one MiB of the unit's lines, strictly UTF-8."""
  path, start, end = epath.Path(unit["source"]), unit["start"], unit["end"]
  with path.open("rb") as f:
    pos = start
    if start > 0:  # the range begins after the first line end at or after start - 1
      f.seek(start - 1)
      pos = start - 1 + len(f.readline())
    buf, buf_at = [], pos
    while pos < end:
      line = f.readline()
      if not line:
        break
      buf.append(line)
      pos += len(line)
      if pos - buf_at >= _TEXT_CHUNK:
        yield buf_at, _decode(b"".join(buf), path, buf_at)
        buf, buf_at = [], pos
    if buf:
      yield buf_at, _decode(b"".join(buf), path, buf_at)


def _decode(data: bytes, path, offset: int) -> str:
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"text file {path} is not UTF-8 (invalid byte at offset {offset + e.start}): convert it to "
                     "UTF-8, e.g. iconv -f latin1 -t utf-8") from None
  return text.removeprefix("\ufeff") if offset == 0 else text


def _tfds_pieces(unit: dict):
  from jaxtextgan.data import lm as lm_data  # pylint: disable=import-outside-toplevel
  _, source = lm_data.tfds_sources(unit["name"], unit["data_dir"], unit["text_key"])[unit["split"]]
  for a in range(unit["start"], unit["end"], 256):
    for r in source.__getitems__(range(a, min(a + 256, unit["end"]))):
      value = r[unit["text_key"]]
      yield None, value.decode("utf-8") if isinstance(value, bytes) else str(value)


def write_shard(unit: dict, out: str, block_len: int) -> dict:
  """Streams one unit into its shard, then writes the shard's `.done` marker; returns the marker's counts."""
  from array_record.python import array_record_module as arm  # pylint: disable=import-outside-toplevel
  if out not in _TOKENIZERS:
    _TOKENIZERS[out] = tok.load_tokenizer(_local_tokenizer(out))
  tokenizer = _TOKENIZERS[out]
  eos = tokenizer.eos_id
  final = epath.Path(out) / unit["shard"]
  final.parent.mkdir(parents=True, exist_ok=True)
  local = _is_local(final)
  # Written beside the shard (then renamed) on a local disk; in a local temporary file (then copied) for a bucket.
  tmp_dir = os.fspath(final.parent) if local else tempfile.mkdtemp(prefix="jtg-shard-")
  tmp = os.path.join(tmp_dir, final.name + f".tmp{os.getpid()}")
  writer = arm.ArrayRecordWriter(tmp, RECORD_OPTIONS)
  carry = np.zeros(0, np.int32)
  tokens = blocks = 0
  any_text, last = False, None
  pieces = _tfds_pieces(unit) if unit["kind"] == "tfds" else _text_pieces(unit)
  try:
    for _, text in pieces:
      any_text = any_text or bool(text.strip())
      ids = tokenizer.encode_corpus(text).astype(np.int32)
      # A document (a TFDS record, or a whole text file) ends with eos, as in `data.lm.tokenize`.
      ends_doc = unit["kind"] == "tfds"
      if ends_doc and eos is not None and (ids.size == 0 or ids[-1] != eos):
        ids = np.append(ids, np.int32(eos))
      tokens += ids.size
      last = int(ids[-1]) if ids.size else last
      carry = np.concatenate([carry, ids])
      n = carry.size // block_len
      for row in carry[:n * block_len].reshape(n, block_len):
        writer.write(row.astype("<i4").tobytes())
      blocks += n
      carry = carry[n * block_len:]
    if unit["kind"] == "text" and unit["end"] == unit["size"] and eos is not None and tokens and last != eos:
      tokens += 1  # the file's last document gets its eos (word level already has one after a final newline)
      carry = np.append(carry, np.int32(eos))
      if carry.size == block_len:
        writer.write(carry.astype("<i4").tobytes())
        blocks, carry = blocks + 1, carry[:0]
    writer.close()
    if unit["kind"] == "text" and unit["start"] == 0 and unit["end"] == unit["size"] and not any_text:
      raise InputError(f"text file {unit['source']} is empty (only whitespace): give files that contain text")
    if local:
      os.replace(tmp, os.fspath(final))
    else:
      epath.Path(tmp).copy(final, overwrite=True)
  finally:
    if local:
      if os.path.exists(tmp):
        os.remove(tmp)
    else:
      shutil.rmtree(tmp_dir, ignore_errors=True)
  done = dict(shard=unit["shard"], source=unit["source"], start=unit["start"], end=unit["end"], tokens=int(tokens),
              blocks=int(blocks), dropped=int(carry.size))
  _marker(out, unit).write_text(json.dumps(done) + "\n")
  return done


def _marker(out: str, unit: dict) -> epath.Path:
  return epath.Path(out) / (unit["shard"] + ".done")


def _is_local(path: epath.Path) -> bool:
  """Whether `path` is on a local disk (else a bucket: write a local file, then copy)."""
  return "://" not in os.fspath(path)  # a gs:// path is a PosixGPath too


def _local_tokenizer(out: str) -> str:
  """A local directory holding the output's tokenizer (copied from a bucket when `out` is remote)."""
  src = epath.Path(out) / TOKENIZER_DIR
  if _is_local(src):
    return os.fspath(src)
  return copy_tokenizer(src, tempfile.mkdtemp(prefix="jtg-tok-"))


def copy_tokenizer(src, dst) -> str:
  """Copies the files of a saved tokenizer directory (any epath) to `dst`; returns `dst`."""
  dst = epath.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for name in (tok.HF_FILE, tok.META_FILE):
    if not (epath.Path(src) / name).exists():
      raise InputError(f"tokenizer file {epath.Path(src) / name} is missing: prepare the shards again")
    (dst / name).write_bytes((epath.Path(src) / name).read_bytes())
  return os.fspath(dst)


# --- the whole corpus -------------------------------------------------------------------------------------------


def _tokenizer(out: epath.Path, spec: str, vocab_size: int | None, units: list[dict], sample_bytes: int):
  """The output's saved tokenizer on resume, else one built from `spec` (word/train-bpe: on a train sample)."""
  saved = out / TOKENIZER_DIR
  if (saved / tok.META_FILE).exists():
    return tok.load_tokenizer(_local_tokenizer(os.fspath(out)))
  sample = None
  if spec in (tok.WORD, "train-bpe"):
    parts, size = [], 0
    for unit in (u for u in units if u["split"] == "train"):
      for _, text in (_tfds_pieces(unit) if unit["kind"] == "tfds" else _text_pieces(unit)):
        parts.append(text)
        size += len(text)
        if size >= sample_bytes:
          break
      if size >= sample_bytes:
        break
    sample = "".join(parts) if units[0]["kind"] == "text" else parts
  tokenizer = tok.build_tokenizer(spec, corpus_text=sample, vocab_size=vocab_size)
  if _is_local(saved):
    tokenizer.save(os.fspath(saved))
  else:
    local = tempfile.mkdtemp(prefix="jtg-tok-")
    tokenizer.save(local)
    copy_tokenizer(local, saved)
  return tokenizer


def prepare(out: str, tokenizer_spec: str, seq_len: int, *, train: str = "", valid: str = "", test: str = "",
            tfds_name: str = "", tfds_data_dir: str = "", text_key: str = "text", vocab_size: int | None = None,
            workers: int = 0, shard_mb: float = 64.0, docs_per_shard: int = 50_000,
            tokenizer_sample_mb: float = 64.0, log=print) -> dict:
  """Prepares (or finishes preparing) the shards in `out`; returns the manifest."""
  if seq_len < 1:
    raise InputError(f"--seq_len={seq_len} is invalid: use a positive integer")
  block_len = seq_len + 1
  if tfds_name:
    units = tfds_units(tfds_name, tfds_data_dir, text_key, docs_per_shard)
  else:
    if not train:
      raise InputError("no input given: pass --train=FILE_OR_DIR (and --valid/--test) or --tfds_name")
    shard_bytes = max(1, int(shard_mb * (1 << 20)))
    units = [u for split, spec in (("train", train), ("valid", valid), ("test", test)) if spec
             for u in text_units(split, spec, shard_bytes)]
  _shard_paths(units)
  plan = [{k: u[k] for k in ("shard", "source", "start", "end")} for u in units]
  root = epath.Path(out)
  root.mkdir(parents=True, exist_ok=True)
  manifest_path = root / MANIFEST
  previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
  if previous is not None:
    _check_same(previous, out, tokenizer_spec, block_len, plan)
  tokenizer = _tokenizer(root, tokenizer_spec, vocab_size, units, int(tokenizer_sample_mb * (1 << 20)))
  manifest = dict(format=FORMAT, complete=False, block_len=block_len, seq_len=seq_len, dtype="int32",
                  tokenizer=dict(spec=tokenizer.spec, recipe=tokenizer_spec, vocab_size=tokenizer.vocab_size,
                                 eos_id=tokenizer.eos_id, dir=TOKENIZER_DIR,
                                 files=sorted(p.name for p in (root / TOKENIZER_DIR).iterdir())),
                  plan=plan)
  if previous is None:
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")

  done, todo = {}, []
  for u in units:
    marker = _marker(out, u)
    if marker.exists() and (root / u["shard"]).exists():
      done[u["shard"]] = json.loads(marker.read_text())
    else:
      todo.append(u)
  if done:
    log(f"{out}: {len(done)} of {len(units)} shards already prepared; {len(todo)} to go")
  if workers > 1 and todo:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = [pool.submit(write_shard, u, out, block_len) for u in todo]
      for future in concurrent.futures.as_completed(futures):
        d = future.result()
        done[d["shard"]] = d
        log(f"  {d['shard']}: {d['blocks']} blocks ({len(done)}/{len(units)})")
  else:
    for u in todo:
      d = done[u["shard"]] = write_shard(u, out, block_len)
      log(f"  {d['shard']}: {d['blocks']} blocks ({len(done)}/{len(units)})")

  splits = {}
  for u in units:
    d = done[u["shard"]]
    s = splits.setdefault(u["split"], dict(tokens=0, blocks=0, dropped=0, shards=[]))
    s["tokens"] += d["tokens"]
    s["blocks"] += d["blocks"]
    s["dropped"] += d["dropped"]
    s["shards"].append(dict(path=u["shard"], source=d["source"], tokens=d["tokens"], blocks=d["blocks"]))
  manifest.update(complete=True, splits=splits)
  manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
  log(f"{out}: " + ", ".join(f"{k} {v['blocks']} blocks ({v['tokens']} tokens)" for k, v in splits.items()))
  return manifest


def _check_same(previous: dict, out: str, spec: str, block_len: int, plan: list[dict]) -> None:
  """An existing output must have been prepared with the same tokenizer, block length and inputs."""
  recipe = previous.get("tokenizer", {})
  if spec not in (recipe.get("recipe"), recipe.get("spec")):
    raise InputError(f"{out} was prepared with tokenizer {recipe.get('recipe')!r}, not {spec!r}: "
                     "use another --out or the same --tokenizer")
  if previous.get("block_len") != block_len:
    raise InputError(f"{out} was prepared with block length {previous.get('block_len')} (seq_len "
                     f"{previous.get('seq_len')}), not {block_len}: use another --out or the same --seq_len")
  if previous.get("plan") != plan:
    raise InputError(f"{out} was prepared from other inputs (or another --shard_mb): use another --out or "
                     "the same inputs")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxtextgan.prepare", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output directory (local or gs://)")
  p.add_argument("--tokenizer", required=True, help="tokenizer spec: word, train-bpe, bpe:DIR, DIR or a hub name")
  p.add_argument("--vocab_size", type=int, default=0, help="word: cap; train-bpe: size (0: none)")
  p.add_argument("--seq_len", type=int, required=True, help="model context T; records hold T+1 tokens")
  for split in ("train", "valid", "test"):
    p.add_argument(f"--{split}", default="", help=f"{split} text: files or directories, comma-separated")
  p.add_argument("--tfds_name", default="")
  p.add_argument("--tfds_data_dir", default="")
  p.add_argument("--text_key", default="text")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes over shards")
  p.add_argument("--shard_mb", type=float, default=64.0, help="MiB of text per shard")
  p.add_argument("--docs_per_shard", type=int, default=50_000, help="TFDS documents per shard")
  p.add_argument("--tokenizer_sample_mb", type=float, default=64.0,
                 help="MiB of train text that word/train-bpe tokenizers are trained on")
  a = p.parse_args(argv)
  return exit_status(prepare, a.out, a.tokenizer, a.seq_len, train=a.train, valid=a.valid, test=a.test,
                     tfds_name=a.tfds_name, tfds_data_dir=a.tfds_data_dir, text_key=a.text_key,
                     vocab_size=a.vocab_size or None, workers=a.workers, shard_mb=a.shard_mb,
                     docs_per_shard=a.docs_per_shard, tokenizer_sample_mb=a.tokenizer_sample_mb)

if __name__ == "__main__":
  sys.exit(main())
