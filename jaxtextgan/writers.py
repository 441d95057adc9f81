"""Run outputs on process 0: metrics.jsonl, TensorBoard events, text samples and PNG curves."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping, Sequence

import jax

from jaxtextgan.errors import InputError

NOTES_MARKER = "<!-- notes: text below this line is kept when the report is rewritten -->"


def write_report(path, text: str) -> None:
  """Writes a Markdown report that ends in NOTES_MARKER; hand-written notes below the marker of the file it
  replaces are kept, so re-running a results command never loses them."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  notes = ""
  if path.exists():
    old = path.read_text(encoding="utf-8")
    if NOTES_MARKER in old:
      notes = old.split(NOTES_MARKER, 1)[1].rstrip("\n")
  body = text.rstrip("\n") + "\n\n" + NOTES_MARKER
  path.write_text(body + (notes if notes.strip() else "") + "\n", encoding="utf-8")


def ensure_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Creates `workdir` and proves it writable, else a one-line InputError."""
  if "://" in str(workdir):
    raise InputError(f"workdir {workdir} is a URL: pass a local path or a shared filesystem mounted on every host "
                     "(e.g. gcsfuse for a GCS bucket)")
  path = pathlib.Path(workdir).expanduser().absolute()
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

  def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

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


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(metrics_path: str | pathlib.Path, png_path: str | pathlib.Path,
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
  fig.savefig(png_path, dpi=110)
  plt.close(fig)


def write_samples(path: str | pathlib.Path, texts: Sequence[str], header: str = "") -> None:
  if jax.process_index() != 0:
    return
  with pathlib.Path(path).open("w", encoding="utf-8") as f:
    if header:
      f.write(header.rstrip() + "\n\n")
    for i, t in enumerate(texts):
      f.write(f"[{i}] {t}\n")
