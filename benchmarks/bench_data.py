"""Data that outgrows memory: peak RSS of `jaxtextgan.prepare` and of the Grain input pipeline at two corpus sizes,
and the pipeline's tokens/s of shuffled, batched blocks in one host process.

python -m benchmarks.bench_data --sizes_mb=10,100 --seq=1024 --batch=32 [--workers=2] [--json=PATH]

For each size it writes a generated corpus (random lines of a 20k-word vocabulary, in files of 5 MB), prepares it
(shards of 4 MiB of text in `--workers` processes, word-level tokenizer capped at 50k words trained on 8 MB), then
reads `--read_s` seconds of global batches (`--batch` x `--seq`+1 int32, shuffled) with 0 and with `--workers` Grain
prefetch processes. Each phase runs in its own process; its peak RSS is sampled every 50 ms over the process and
its children (their sum, and the largest one). A corpus read into memory would grow the RSS with the corpus;
streaming keeps it flat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(directory: str, size_mb: int, seed: int = 0, file_mb: int = 5) -> int:
  """Random lines of a Zipf-ish 20k-word vocabulary, `size_mb` MB in files of `file_mb` MB; returns the bytes."""
  rng = np.random.default_rng(seed)
  words = np.array([f"w{i}" for i in range(20_000)])
  probs = 1.0 / np.arange(1, len(words) + 1)
  probs /= probs.sum()
  os.makedirs(directory, exist_ok=True)
  total, i = 0, 0
  while total < size_mb * 1_000_000:
    with open(os.path.join(directory, f"part{i:03d}.txt"), "w", encoding="utf-8") as f:
      written = 0
      while written < file_mb * 1_000_000 and total + written < size_mb * 1_000_000:
        ids = rng.choice(len(words), size=(2000, 12), p=probs)
        chunk = "\n".join(" ".join(row) for row in words[ids]) + "\n"
        f.write(chunk)
        written += len(chunk)
    total, i = total + written, i + 1
  return total


def peak_rss(cmd: list[str], env=None) -> tuple[dict, str]:
  """Runs `cmd`; ({tree_mb, largest_mb, seconds}, stdout) with RSS sampled over the process and its children."""
  import psutil  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  peak = {"tree_mb": 0.0, "largest_mb": 0.0}
  stop = threading.Event()

  def sample():
    root = psutil.Process(proc.pid)
    while not stop.is_set():
      try:
        rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
      except psutil.Error:
        rss = []
      if rss:
        peak["tree_mb"] = max(peak["tree_mb"], sum(rss) / 2**20)
        peak["largest_mb"] = max(peak["largest_mb"], max(rss) / 2**20)
      stop.wait(0.05)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  out, err = proc.communicate()
  stop.set()
  thread.join()
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
  peak["seconds"] = time.perf_counter() - t0
  return peak, out


def read_main(args) -> None:
  """The training input alone: `--read_s` seconds of global batches from the shards; prints JSON."""
  from jaxtextgan.data import shards  # pylint: disable=import-outside-toplevel
  split = shards.open_split(args.shards)
  it = split.batch_iterator(args.batch, seed=0, workers=args.workers)
  next(it)  # the pipeline (and its workers) started
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < args.read_s:
    batch = next(it)
    n += batch["inputs"].size
  seconds = time.perf_counter() - t0
  it.close()
  print(json.dumps(dict(tokens=n, seconds=seconds, tokens_per_s=n / seconds, blocks=len(split))))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes_mb", default="10,100")
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--read_s", type=float, default=20.0)
  p.add_argument("--dir", default="", help="scratch directory (default: a temporary one, removed)")
  p.add_argument("--json", default="")
  p.add_argument("--read", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--shards", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.read:
    return read_main(args)

  with tempfile.TemporaryDirectory(dir=args.dir or None) as scratch:
    report = dict(seq=args.seq, batch=args.batch, workers=args.workers, cores=os.cpu_count(), sizes={})
    for size in (int(s) for s in args.sizes_mb.split(",")):
      corpus, out = os.path.join(scratch, f"corpus{size}"), os.path.join(scratch, f"shards{size}")
      nbytes = write_corpus(corpus, size)
      prep, _ = peak_rss([sys.executable, "-m", "jaxtextgan.prepare", f"--out={out}", "--tokenizer=word",
                          "--vocab_size=50000", "--tokenizer_sample_mb=8", f"--seq_len={args.seq}", f"--train={corpus}",
                          f"--workers={args.workers}", "--shard_mb=4"])
      manifest = json.load(open(os.path.join(out, "manifest.json"), encoding="utf-8"))
      prep.update(text_mb=nbytes / 1e6, tokens=manifest["splits"]["train"]["tokens"],
                  mb_per_s=nbytes / 1e6 / prep["seconds"])
      row = dict(prepare=prep)
      for workers in sorted({0, args.workers}):
        rss, out_json = peak_rss([sys.executable, "-m", "benchmarks.bench_data", "--read", f"--shards={out}",
                                  f"--batch={args.batch}", f"--workers={workers}", f"--read_s={args.read_s}"])
        row[f"read_workers{workers}"] = {**rss, **json.loads(out_json.strip().splitlines()[-1])}
      report["sizes"][size] = row
      print(json.dumps({size: row}), flush=True)
    sizes = sorted(report["sizes"])
    small, large = report["sizes"][sizes[0]], report["sizes"][sizes[-1]]
    report["rss_growth"] = {k: large[k]["tree_mb"] / small[k]["tree_mb"] - 1 for k in small}
    print(json.dumps(report["rss_growth"]))
    if args.json:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
