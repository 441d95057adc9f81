"""Export a trained model to Hugging Face format.

  python -m jaxtextgan.export --workdir=DIR --out=HF_DIR [--force]

The newest checkpoint of DIR is exported, by the kind of run:
* LM (`objective='lm'`: configs/lm.py, or a GAN's `pretrain/` sub-run): its GPT-2 as a `GPT2LMHeadModel`
  directory (config.json, model.safetensors in fp32), from scanned or unrolled layers alike.
* GAN (`objective='gan'`): G's GPT-2, the same way. G starts every sample from the input E[bos] + W z at
  position 0 (z ~ N(0, I)); the exported LM has no z input, so run from `bos_token_id` it is G with z = 0. W goes
  to generator_latent.safetensors as `latent.weight` (d_model, latent_dim), torch Linear layout: G(z) is the
  exported model fed `inputs_embeds = [wte[bos] + latent.weight @ z, wte[y_1], ...]` (transformers adds the
  positions), where y_t are its draws (a hard Gumbel-Softmax draw is an exact sample of softmax(logits)).
  config.json's "jaxtextgan"/"generator" keeps G's settings (bos_id, length, forbidden_ids: ids G never draws).
  An MLP generator has no GPT-2 and is refused.
* GAN-BERT (a 'train' run, which writes `classifier/`): see `jaxtextgan.export_ganbert`.
The Gopher options (RMSNorm, relative positions) and an output bias have no GPT-2 equivalent and are refused.

Tokenizer files beside a GPT-2: tokenizer.json (the `tokenizers` pipeline the run used) with tokenizer_config.json
and special_tokens_map.json, for `PreTrainedTokenizerFast` / `AutoTokenizer`, and jaxtextgan_tokenizer.json for
`jaxtextgan.tokenizers.load_tokenizer`. Word level (PTB): `<unk>`, newline = `<eos>`; byte-level BPE: also
vocab.json + merges.txt (`GPT2Tokenizer`); the trigram oracle's ids are not text: no tokenizer is written.
config.json keeps our whole model config under "jaxtextgan", so `hf_gpt2.load_gpt2(HF_DIR)` gives back the
checkpoint's config and parameters. An existing non-empty --out is replaced only with --force.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxtextgan import checkpoint
from jaxtextgan import tokenizers as tok
from jaxtextgan.errors import InputError
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2, hf_gpt2

EXPORTABLE = "an LM ('lm'), a GAN ('gan') or a GAN-BERT 'train' run"


# --------------------------------------------------------------------------------------------------- checkpoints


def _steps(directory: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def find_checkpoint(workdir) -> tuple[str, pathlib.Path, dict, int]:
  """(kind 'lm' | 'gan' | 'ganbert', checkpoint directory, meta, step) of the newest checkpoint of `workdir`."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise InputError(f"workdir {workdir} does not exist: pass the --workdir of {EXPORTABLE}")
  classifier = workdir / "classifier"
  if _steps(classifier):
    meta, step = checkpoint.read_meta(classifier)
    return "ganbert", classifier, meta, step
  ckpt_dir = workdir / "checkpoints"
  if not _steps(ckpt_dir):
    hint = (f"; its MLE pre-training alone is exported with --workdir={workdir / 'pretrain'}"
            if _steps(workdir / "pretrain" / "checkpoints") else "")
    raise InputError(f"no checkpoint in {ckpt_dir}: train the run first{hint}")
  meta, step = checkpoint.read_meta(ckpt_dir)
  objective = meta.get("objective")
  if objective in ("lm", "gan"):
    return objective, ckpt_dir, meta, step
  if "label_names" in meta:
    raise InputError(f"{workdir} is a GAN-BERT run without its exported classifier ({classifier} is missing): "
                     f"let the 'train' run finish, which writes it")
  raise InputError(f"checkpoint {ckpt_dir / str(step)} has objective {objective!r}, which cannot be exported: "
                   f"pass the workdir of {EXPORTABLE}")


def _shapes(tree) -> dict[str, tuple]:
  """'/'-joined key path -> shape of every array leaf (attribute, dict and index keys alike)."""
  def name(key):
    return str(next((getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)), key))
  return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, "shape")}


def restore_params(ckpt_dir: pathlib.Path, step: int, abstract, path: tuple[str, ...]) -> dict:
  """The subtree at `path` of a checkpoint's "state" (e.g. ('params',)), shaped like `abstract` (an nnx State of
  Params), as a pure dict of numpy arrays. Only that subtree is read (orbax partial restore): optimizer states and
  other players are skipped, whatever their layout. Arrays missing or of other shapes than `abstract` are one
  InputError, raised before any array is read."""
  where = pathlib.Path(ckpt_dir) / str(step)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  item = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  for key in reversed(path):
    item = {key: item}
  manager = ocp.CheckpointManager(
    pathlib.Path(ckpt_dir).absolute(), item_names=("state", "meta"),
    item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    options=ocp.CheckpointManagerOptions(create=False))
  try:
    saved = _shapes(manager.item_metadata(step)["state"])
    for name, shape in _shapes(item).items():
      if saved.get(name) != shape:
        found = "lacks it" if name not in saved else f"has shape {saved[name]}"
        raise InputError(f"checkpoint {where} does not hold the model its meta records "
                         f"({name.removesuffix('/value')}: expected shape {shape}, the checkpoint {found}): export a "
                         f"checkpoint written by a jaxtextgan run")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)))
  except InputError:
    raise
  except Exception as err:  # noqa: BLE001 - a damaged checkpoint
    first = str(err).splitlines()[0][:200] if str(err) else ""
    raise InputError(f"checkpoint {where} could not be read ({type(err).__name__}: {first}): it is damaged; "
                     f"export another one") from None
  finally:
    manager.close()
  state = restored["state"]
  for key in path:
    state = state[key]
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def abstract_params(build) -> nnx.State:
  """Shapes and dtypes of the Params of the module `build(rngs)` makes, without allocating them."""
  return nnx.eval_shape(lambda: nnx.split(build(nnx.Rngs(0)), nnx.Param)[1])


def model_config(meta: dict, where: pathlib.Path) -> gpt2.GPT2Config:
  try:
    return gpt2.GPT2Config(**meta["model"])
  except (KeyError, TypeError, ValueError) as err:
    raise InputError(f"checkpoint {where} records no readable GPT-2 config ({err}): it is not an LM or GAN "
                     f"checkpoint of this version") from None


# ------------------------------------------------------------------------------------------------------ GPT-2


def checkpoint_tokenizer(workdir: pathlib.Path, spec: str | None) -> tok.Tokenizer | None:
  """The run's saved tokenizer (`<workdir>/tokenizer`, or the parent run's for a GAN's pretrain/), checked against
  the checkpoint's spec; None when the checkpoint's ids are not text (the trigram oracle)."""
  if not spec or spec.split(":")[0] not in (tok.WORD, tok.BYTE_BPE, tok.HF):
    return None
  for directory in (workdir / "tokenizer", workdir.parent / "tokenizer"):
    if (directory / tok.META_FILE).is_file():
      tokenizer = tok.load_tokenizer(directory)
      if tokenizer.spec == spec:
        return tokenizer
  raise InputError(f"the tokenizer the checkpoint was trained with ({spec}) is not in {workdir / 'tokenizer'}: "
                   f"the workdir is incomplete; restore its tokenizer/ folder")


def write_tokenizer(directory: pathlib.Path, tokenizer: tok.Tokenizer, max_len: int) -> None:
  """tokenizer.json + tokenizer_config.json + special_tokens_map.json (PreTrainedTokenizerFast), our own
  jaxtextgan_tokenizer.json, and for byte-level BPE vocab.json + merges.txt."""
  tokenizer.save(directory)
  unk = next((t for t in (tok.UNK, "[UNK]") if tokenizer.token_to_id(t) is not None), None)
  special = {"bos_token": tokenizer.eos_token, "eos_token": tokenizer.eos_token, "unk_token": unk,
             "pad_token": tokenizer.pad_token}
  special = {k: v for k, v in special.items() if v is not None}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
            "clean_up_tokenization_spaces": False, **special}
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
  if tokenizer.kind == tok.BYTE_BPE:
    tokenizer.hf.model.save(str(directory))


def export_gpt2(kind: str, workdir: pathlib.Path, ckpt_dir: pathlib.Path, meta: dict, step: int,
                out: pathlib.Path) -> None:
  """An LM's GPT-2, or a GAN's G (its GPT-2 plus generator_latent.safetensors), as a GPT2LMHeadModel directory."""
  where = ckpt_dir / str(step)
  cfg = model_config(meta, where)
  hf_gpt2.check_exportable(cfg)
  generator = meta.get("generator") or {}
  if kind == "gan" and generator.get("kind", "gpt2") != "gpt2":
    raise InputError(f"checkpoint {where} holds an MLP generator (generator.kind={generator.get('kind')!r}): it "
                     f"has no GPT-2 to export; only generator.kind='gpt2' GANs can be exported")
  tokenizer = checkpoint_tokenizer(workdir, meta.get("tokenizer"))
  eos = tokenizer.eos_id if tokenizer is not None else None
  extra = {"source": {"objective": kind, "checkpoint": str(where.absolute()), "step": step,
                      "tokenizer": meta.get("tokenizer")}}
  if kind == "lm":
    params = restore_params(ckpt_dir, step, abstract_params(lambda r: gpt2.GPT2(cfg, rngs=r)), ("params",))
    bos = eos  # the LM samples from eos (tasks/lm.py's samples)
  else:
    try:
      gen_cfg = gen_lib.GeneratorConfig(**{**generator, "forbidden_ids": tuple(generator.get("forbidden_ids", ())),
                                           "mlp_hidden": tuple(generator.get("mlp_hidden", ()))})
    except TypeError as err:
      raise InputError(f"checkpoint {where} records an unreadable generator config ({err})") from None
    g = restore_params(ckpt_dir, step, abstract_params(lambda r: gen_lib.GPT2Generator(gen_cfg, cfg, rngs=r)),
                       ("g", "params"))
    params, bos = g["lm"], gen_cfg.bos_id
    extra["generator"] = {**generator, "latent_weights": "generator_latent.safetensors"}
    from safetensors.numpy import save_file
    latent = np.ascontiguousarray(np.asarray(g["latent"]["kernel"], np.float32).T)  # (latent, D) -> (D, latent)
    save_file({"latent.weight": latent}, str(out / "generator_latent.safetensors"),
              metadata={"format": "pt", "bos_token_id": str(bos)})
  hf_gpt2.save_gpt2(out, params, cfg, bos_token_id=bos, eos_token_id=eos, extra=extra)
  if tokenizer is not None:
    write_tokenizer(out, tokenizer, cfg.max_len)


# ----------------------------------------------------------------------------------------------------- output


def check_out(out: pathlib.Path, workdir: pathlib.Path, force: bool) -> None:
  """--out must not hold the workdir, and must be absent or empty unless --force."""
  resolved, source = out.resolve(), workdir.resolve()
  if resolved == source or resolved in source.parents:
    raise InputError(f"--out={out} is or contains the workdir {workdir}: replacing it would delete the run; choose "
                     f"another directory (e.g. {workdir / 'hf'})")
  if out.exists() and not out.is_dir():
    raise InputError(f"--out={out} is a file: pass a directory")
  if out.is_dir() and any(out.iterdir()) and not force:
    raise InputError(f"--out={out} exists and is not empty: pass --force to replace it, or choose another --out")


def export(workdir, out, *, force: bool = False) -> dict:
  """Exports the newest checkpoint of `workdir` to `out` (see the module docstring); returns a summary.

  The files are written to a sibling temporary directory that replaces `out` only when complete, so a failed
  export leaves `out` as it was.
  """
  workdir, out = pathlib.Path(workdir), pathlib.Path(out).resolve()
  kind, ckpt_dir, meta, step = find_checkpoint(workdir)
  check_out(out, workdir, force)
  staging = out.parent / f".{out.name}.export-tmp"
  if staging.exists():
    shutil.rmtree(staging)
  staging.mkdir(parents=True)
  try:
    if kind == "ganbert":
      from jaxtextgan import export_ganbert
      export_ganbert.export_classifier(workdir, ckpt_dir, meta, step, staging, restore_params, abstract_params)
    else:
      export_gpt2(kind, workdir, ckpt_dir, meta, step, staging)
    if out.is_dir():
      if force:
        shutil.rmtree(out)
      else:
        out.rmdir()  # empty: check_out said so
    os.replace(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging)
  return {"kind": kind, "checkpoint": str(ckpt_dir / str(step)), "step": step, "out": str(out),
          "files": sorted(p.name for p in out.iterdir())}


LOAD_HINTS = {
  "lm": "transformers.GPT2LMHeadModel.from_pretrained({out!r}), AutoTokenizer.from_pretrained({out!r})",
  "gan": "transformers.GPT2LMHeadModel.from_pretrained({out!r}) (G with z = 0; see generator_latent.safetensors)",
  "ganbert": "transformers.BertModel.from_pretrained({out!r}); probabilities: ganbert_head.load({out!r})(texts)",
}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxtextgan.export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help=f"the workdir of {EXPORTABLE}")
  parser.add_argument("--out", required=True, help="the Hugging Face directory to write (absent or empty)")
  parser.add_argument("--force", action="store_true", help="replace --out when it exists and is not empty")
  args = parser.parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    summary = export(args.workdir, args.out, force=args.force)
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(f"exported the {summary['kind']} checkpoint {summary['checkpoint']} to {summary['out']}: "
        f"{', '.join(summary['files'])}")
  print("load with " + LOAD_HINTS[summary["kind"]].format(out=summary["out"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
