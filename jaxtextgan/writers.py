"""Run outputs on process 0: metrics.jsonl, TensorBoard events, text samples and PNG curves.

Paths go through `etils.epath`, so a workdir may be a local folder or a bucket (`gs://...`).
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import sys
from typing import Mapping, Sequence

import jax
from etils import epath

from jaxtextgan.errors import InputError

NOTES_MARKER = "<!-- notes: text below this line is kept when the report is rewritten -->"


def write_report(path, text: str) -> None:
  """Writes a Markdown report that ends in NOTES_MARKER; hand-written notes below the marker of the file it
  replaces are kept, so re-running a results command never loses them."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  notes = ""
  if path.exists():
    old = path.read_text(encoding="utf-8")
    if NOTES_MARKER in old:
      notes = old.split(NOTES_MARKER, 1)[1].rstrip("\n")
  body = text.rstrip("\n") + "\n\n" + NOTES_MARKER
  path.write_text(body + (notes if notes.strip() else "") + "\n", encoding="utf-8")


def is_local(path: str | os.PathLike) -> bool:
  """Whether `path` is on a local (or mounted) filesystem rather than a URL such as gs://bucket/run."""
  return "://" not in os.fspath(path)


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path: a URL as given, a local path with ~ expanded and made absolute."""
  return epath.Path(path).expanduser().absolute() if is_local(path) else epath.Path(path)


def ensure_workdir(workdir: str | os.PathLike) -> epath.Path:
  """Creates `workdir` (local or gs://) and proves it writable, else a one-line InputError."""
  path = workdir_path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as err:
    raise InputError(f"workdir {path} is not writable ({err.strerror}): pass a --workdir you can write to") from None
  return path


def _scalar(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


class MetricWriter:
  """Appends {"step", "split", **scalars} lines to metrics.jsonl and mirrors them to TensorBoard."""

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.fspath(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
    if not self.active:
      return
    row = {"step": int(step), "split": split, **{k: _scalar(v) for k, v in scalars.items()}}
    with self.path.open("a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def write_text(self, step: int, tag: str, texts: Sequence[str]) -> None:
    if self.active and self._tb is not None:
      self._tb.add_text(tag, "\n\n".join(f"    {t}" for t in texts), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(metrics_path: str | os.PathLike, png_path: str | os.PathLike,
                panels: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
  """One panel per (title, [(split, key), ...]); a curve per (split, key) found in metrics.jsonl."""
  if jax.process_index() != 0:
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(metrics_path)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
  for ax, (title, curves) in zip(axes[0], panels):
    for split, key in curves:
      pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and isinstance(r.get(key), (int, float))]
      if pts:
        # A resumed run may rewrite steps; keep the last value written for each step.
        last = dict(pts)
        xs = sorted(last)
        ax.plot(xs, [last[x] for x in xs], label=f"{split} {key}", marker="." if len(xs) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, png_path)


def save_figure(fig, *png_paths: str | os.PathLike) -> None:
  """Writes a matplotlib figure as PNG to each path through epath (local or gs://), making folders; closes it."""
  import matplotlib.pyplot as plt
  png = io.BytesIO()  # rendered in memory: matplotlib writes local files only
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  for png_path in png_paths:
    path = epath.Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png.getvalue())


def write_samples(path: str | os.PathLike, texts: Sequence[str], header: str = "") -> None:
  if jax.process_index() != 0:
    return
  with epath.Path(path).open("w", encoding="utf-8") as f:
    if header:
      f.write(header.rstrip() + "\n\n")
    for i, t in enumerate(texts):
      f.write(f"[{i}] {t}\n")


def command_line(default: str) -> str:
  """This run's command line, quoted for a shell, as a report quotes it; `default` when not run by `main`."""
  if sys.argv and sys.argv[0].endswith("main.py"):
    return "python -m jaxtextgan.main " + shlex.join(sys.argv[1:])
  return default
