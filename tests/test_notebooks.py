"""The Colab quickstart notebooks: each runs top to bottom at its tiny scale, and the committed files are exactly what
notebooks/make_notebooks.py generates, without outputs.

Each notebook runs in a fresh kernel of this interpreter with its working directory in tmp_path (so its workdirs/
never land in the repository) and JAXTEXTGAN_REPO pointing at the repository, so it finds configs/. After the last
cell the test runs one more cell that prints a few of the notebook's variables as JSON (and the kernel's CPU time),
and checks them.
"""

import importlib.util
import json
import math
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, shared_path

NOTEBOOKS = REPO / "notebooks"

# Path parts under ../shared that a notebook reads. None today: PTB, BBC News, MiniLM and the trigram corpus ship in
# packages. A notebook listed here skips without ../shared (fails with CI=true).
NEEDS_SHARED: dict[str, tuple[str, ...]] = {}

# Per notebook: a Python expression, evaluated in the kernel after the last cell, whose value (JSON) is checked.
PROBES = {
  "01_lm_quickstart.ipynb": '{"valid_perplexity": results["valid"]["perplexity"], '
                            '"loss": float(metrics["loss"]), "vocab": tok.vocab_size}',
  "02_text_gan.ipynb": '{"before": results["before"]["nll_oracle"], "after": results["after"]["nll_oracle"], '
                       '"one_hot": bool(jnp.all(y_BTV.sum(-1) == 1) & jnp.all(y_BTV.max(-1) == 1)), '
                       '"d_loss": float(d_metrics["d_loss"]), "g_loss": float(g_metrics["g_loss"]), '
                       '"pngs": [p.name for p in pathlib.Path("workdirs/notebook_gan").glob("*.png")]}',
  "03_ganbert.ipynb": '{"accuracy": results["accuracy"], "labels": list(classifier.label_names), '
                      '"probs": np.asarray(probs, np.float64).tolist(), "d_sup": float(d_metrics["d_sup"]), '
                      '"g_loss": float(g_metrics["g_loss"])}',
  "04_dfine.ipynb": '{"recovered": out["report"]["gap_recovered"], "p_true": float(p_true[..., chosen].mean()), '
                    '"p_hat": float(np.exp(log_p_hat[..., chosen]).mean()), '
                    '"q0": float(np.exp(log_q0[..., chosen]).mean()), "loss": float(metrics["loss"])}',
}

MARK = "NOTEBOOK_PROBE "


def _generator():
  spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory):
  """A 'python3' kernelspec for this interpreter, first on JUPYTER_PATH: a user-level python3 kernel of another
  Python can then not be picked up instead (ipykernel's bundled spec would do in a clean venv)."""
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (jaxtextgan tests)", "language": "python"}), encoding="utf-8")
  return root


def execute(name: str, tmp_path, monkeypatch, kernel_dir) -> dict:
  """Runs notebook `name` with cwd tmp_path; returns the PROBES values plus the kernel's CPU seconds."""
  for parts in NEEDS_SHARED.get(name, ()):
    shared_path(*parts)
  monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
  monkeypatch.setenv("JAXTEXTGAN_REPO", str(REPO))
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(
    "import json as _json, resource as _resource\n"
    "_usage = _resource.getrusage(_resource.RUSAGE_SELF)\n"
    f"print({MARK!r} + _json.dumps({{**({PROBES[name]}), 'kernel_cpu_s': _usage.ru_utime + _usage.ru_stime}}))"))
  client = NotebookClient(nb, kernel_name="python3", timeout=900, startup_timeout=120,
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failing cell
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
  probe = json.loads(text.split(MARK, 1)[1])
  print(f"{name}: kernel CPU {probe['kernel_cpu_s']:.1f} s")
  return probe


def _finite(*values) -> bool:
  return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_lm_quickstart(tmp_path, monkeypatch, kernel_dir):
  p = execute("01_lm_quickstart.ipynb", tmp_path, monkeypatch, kernel_dir)
  # 40 steps take a 10k-word uniform guess (perplexity ~ vocab) well down.
  assert _finite(p["valid_perplexity"], p["loss"]) and 1 < p["valid_perplexity"] < p["vocab"] / 4, p
  assert (tmp_path / "workdirs" / "notebook_lm" / "loss_curves.png").is_file()


def test_text_gan(tmp_path, monkeypatch, kernel_dir):
  p = execute("02_text_gan.ipynb", tmp_path, monkeypatch, kernel_dir)
  assert _finite(p["before"], p["after"], p["d_loss"], p["g_loss"]), p
  assert p["after"] < p["before"], p  # the GAN alone moves a random G towards the oracle
  assert p["one_hot"] and "gan_curves.png" in p["pngs"], p


def test_ganbert(tmp_path, monkeypatch, kernel_dir):
  p = execute("03_ganbert.ipynb", tmp_path, monkeypatch, kernel_dir)
  assert _finite(p["accuracy"], p["d_sup"], p["g_loss"]), p
  assert p["accuracy"] > 0.4, p  # 5 classes: chance is 0.2
  assert p["labels"] == ["business", "entertainment", "politics", "sports", "tech"], p
  assert len(p["probs"]) == 5 and all(abs(sum(row) - 1) < 1e-4 for row in p["probs"]), p
  # The five example texts are written for sports, business, tech, politics, entertainment.
  predicted = [p["labels"][max(range(5), key=row.__getitem__)] for row in p["probs"]]
  hits = sum(a == b for a, b in zip(predicted, ["sports", "business", "tech", "politics", "entertainment"]))
  assert hits >= 3, predicted
  assert (tmp_path / "workdirs" / "notebook_ganbert" / "classifier").is_dir()


def test_dfine(tmp_path, monkeypatch, kernel_dir):
  p = execute("04_dfine.ipynb", tmp_path, monkeypatch, kernel_dir)
  recovered = p["recovered"]
  assert set(recovered) == {"Perturbed model ftd.", "Perturbed model ftd. with cross-entropy only"}, p
  assert recovered["Perturbed model ftd."] > 0, p
  # The discriminator's p^ (eq. 8) restores the perturbed word that q0 all but forbids.
  assert p["q0"] < p["p_true"] / 100 and p["p_true"] / 3 < p["p_hat"] < 3 * p["p_true"], p
  assert _finite(p["loss"]), p


def test_committed_notebooks_are_generated_and_have_no_outputs():
  gen = _generator()
  assert sorted(gen.NOTEBOOKS) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")), \
    "every notebook in notebooks/ must come from make_notebooks.py"
  assert set(gen.NOTEBOOKS) == set(PROBES), "every notebook needs a probe here"
  for name, cells in gen.NOTEBOOKS.items():
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    assert text == gen.render(gen.build(name, cells)), \
      f"{name} differs from make_notebooks.py: edit the cells there and run python notebooks/make_notebooks.py"
    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, f"{name} is committed with outputs"
