"""Check a TPU plan on any machine: compile a run's Stages for a TPU slice with XLA:TPU, without the hardware.

`--dry_run --topology=v5e:4x4` builds the mesh over the devices of that slice (libtpu's compile-only topology,
as MaxText's train_compile.py does), compiles exactly the Stages a run would train, and reports per chip: HBM
(arguments, outputs, temporaries) against the chip's HBM, a roofline lower bound on the step time and so an upper
bound on MFU. `--max_batch` searches the largest per-chip batch (a power of two) that fits.

libtpu stays out of ordinary runs. Where it is importable (`pip install libtpu` into the venv), every
`import jax; jax.devices()` on a machine without TPUs prints libtpu's warnings. So it lives in its own directory,
`<venv>/libtpu` (not on sys.path), and is loaded only here:

  python -m pip install --target "$(python -c 'import sys; print(sys.prefix)')/libtpu" "libtpu==0.0.42.*"

(the version `jax[tpu]` pins for the installed jax; `install_command()` prints it). `TPU_LIBRARY_PATH` or an
importable `libtpu` (a TPU VM's `jax[tpu]`) are used first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import pathlib
import re
import sys
from typing import Any, Sequence

import jax

from jaxtextgan import mfu
from jaxtextgan.errors import InputError

GiB = 1024 ** 3
LIBTPU_DIR = pathlib.Path(sys.prefix) / "libtpu"


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip as JAX sees it (one device; v4 and v5p as megacore): HBM, peak dense bf16 FLOP/s, HBM bytes/s."""
  name: str
  hbm_bytes: int
  peak_flops: float
  hbm_bandwidth: float
  chip_config: str = "default"  # libtpu's chip config: "megacore" makes a v4 chip's two TensorCores one device


def _chip(name: str, kind: str, chip_config: str = "default") -> Chip:
  """A row of `mfu.ACCELERATORS` (Cloud TPU datasheets: cloud.google.com/tpu/docs/v4, v5e, v5p, v6e). HBM is in
  GiB, as XLA:TPU counts it (its out-of-memory errors quote 15.75G of a v5e chip's 16G as usable)."""
  row = mfu.ACCELERATORS[kind]
  return Chip(name, int(row["hbm_bytes"]), row["bfloat16"], row["hbm_bandwidth"], chip_config)


CHIPS: dict[str, Chip] = {
  "v4": _chip("v4", "TPU v4", chip_config="megacore"),
  "v5e": _chip("v5e", "TPU v5 lite"),
  "v5p": _chip("v5p", "TPU v5p"),
  "v6e": _chip("v6e", "TPU v6 lite"),
}
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
EXAMPLES = "v5e:2x4, v5p:2x2x1, v6e:2x4, v4:2x2x4, v5e:16x16"

# Every global-batch field of an objective's config (all scale together in the batch search).
BATCH_FIELDS = {
  "lm": ("data.batch_size",),
  "gan": ("data.batch_size", "gan.batch_size"),
  "ganbert": ("data.batch_size",),
  "dfine": ("data.batch_size",),
}


# --- libtpu ---------------------------------------------------------------------------------------------------------

def requirement() -> str:
  """The libtpu that `jax[tpu]` pins for the installed jax, e.g. 'libtpu==0.0.42.*'."""
  import importlib.metadata
  for req in importlib.metadata.requires("jax") or ():
    name, _, marker = req.partition(";")
    if name.strip().startswith("libtpu") and "tpu" in marker:
      return name.strip().replace(" ", "")
  return "libtpu"


def install_command() -> str:
  return f'{sys.executable} -m pip install --target {LIBTPU_DIR} "{requirement()}"'


def library_path() -> str:
  """libtpu.so: $TPU_LIBRARY_PATH, an importable `libtpu`, or `<venv>/libtpu`; an InputError names the fix."""
  from_env = os.environ.get("TPU_LIBRARY_PATH")
  if from_env and os.path.isfile(from_env):
    return from_env
  spec = importlib.util.find_spec("libtpu")
  if spec is not None and spec.submodule_search_locations:
    found = pathlib.Path(list(spec.submodule_search_locations)[0]) / "libtpu.so"
    if found.is_file():
      return str(found)
  own = LIBTPU_DIR / "libtpu" / "libtpu.so"
  if own.is_file():
    return str(own)
  raise InputError(f"--topology needs libtpu (the XLA:TPU compiler), which is not installed: run {install_command()}")


@contextlib.contextmanager
def _env(**values: str):
  """Sets environment variables that are not set already, for the duration of the block."""
  added = {k: v for k, v in values.items() if k not in os.environ}
  os.environ.update(added)
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


def topology_devices(topology: str) -> list:
  """The compile-only devices of a TPU slice named as `get_topology_desc` accepts ('v5e:2x2', 'v4:2x2x4')."""
  from jax.experimental import topologies
  version = topology.split(":")[0].lower()
  chip = CHIPS.get(version)
  jax.devices()  # the ordinary backends start before libtpu is visible, so none of them tries a TPU client
  # libtpu reads these once, when it loads: with them it does not look for (and warn about) a TPU VM's hosts, and
  # several processes may compile at once (it otherwise takes /tmp/libtpu_lockfile, meant for one owner of chips).
  with _env(TPU_LIBRARY_PATH=library_path(), TPU_SKIP_MDS_QUERY="1", TPU_WORKER_HOSTNAMES="localhost",
            TPU_ACCELERATOR_TYPE="v5litepod-4", ALLOW_MULTIPLE_LIBTPU_LOAD="1"):
    try:
      desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                          **({"chip_config_name": chip.chip_config} if chip else {}))
    except Exception as e:  # noqa: BLE001  (libtpu raises JaxRuntimeError/RuntimeError with its reason)
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      if "INVALID_ARGUMENT" not in reason:
        raise InputError(f"--topology={topology}: libtpu could not load it ({reason})") from None
      raise InputError(f"--topology={topology} is not a TPU slice libtpu can compile for ({reason}): use "
                       f"<version>:<shape>, e.g. {EXAMPLES}") from None
  return list(desc.devices)


def chip_of(devices: Sequence) -> Chip:
  kind = devices[0].device_kind
  if kind not in DEVICE_KINDS:
    raise InputError(f"TPU {kind!r} has no entry in jaxtextgan.tpu.CHIPS (HBM, peak FLOP/s, bandwidth): use one "
                     f"of {', '.join(CHIPS)}")
  return CHIPS[DEVICE_KINDS[kind]]


# --- what a compiled step costs on a chip --------------------------------------------------------------------------

def out_of_memory(error: Exception) -> str | None:
  """XLA:TPU's one-line reason when a program does not fit HBM (e.g. 'Used 43.64G of 15.75G hbm...'), else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  used = re.search(r"Used [0-9.]+[KMGT]? of [0-9.]+[KMGT]? hbm[^.]*\.(?: Exceeded[^.]*\.[0-9]*[KMGT]?\.?)?", text)
  return used.group(0).strip() if used else text.splitlines()[0][:200]


def roofline(report: dict[str, Any], chip: Chip) -> dict[str, float]:
  """Estimated bounds for one step: time ≥ max(model FLOPs / peak, bytes / bandwidth) per chip; MFU ≤ the share
  of that time the FLOPs need.

  FLOPs are the analytic model FLOPs (`Stage.model_flops_per_step`, spread over the chips), not XLA's: XLA's cost
  analysis counts a scanned layer body once. Bytes are XLA's bytes accessed (also the body once) but at least the
  arguments and outputs, so the memory term is a lower bound too, and the MFU bound an upper bound.
  """
  chips = report["devices"]
  flops = report.get("model_flops_per_step", 0.0) / chips
  moved = max(report.get("bytes_accessed", 0.0),
              report.get("argument_size_in_bytes", 0) + report.get("output_size_in_bytes", 0))
  compute_s, memory_s = flops / chip.peak_flops, moved / chip.hbm_bandwidth
  step_s = max(compute_s, memory_s)
  out = {"compute_seconds": compute_s, "memory_seconds": memory_s, "step_seconds_lower_bound": step_s,
         "mfu_upper_bound": compute_s / step_s if step_s > 0 else float("nan")}
  if report.get("tokens_per_step") and step_s > 0:
    out["tokens_per_second_per_chip_upper_bound"] = report["tokens_per_step"] / chips / step_s
  return out


def chip_fields(report: dict[str, Any], chip: Chip) -> dict[str, Any]:
  """The report's TPU fields: chip, HBM, whether it fits, and the roofline estimate."""
  out = {"chip": chip.name, "hbm_bytes": chip.hbm_bytes,
         "fits": report.get("per_device_bytes", math.inf) <= chip.hbm_bytes}
  if report.get("model_flops_per_step"):
    out.update(roofline(report, chip))
  return out


def format_chip(report: dict[str, Any]) -> str:
  """The lines `--topology` adds under dryrun's report."""
  if "error" in report:
    return f"fits {report['chip']} HBM   no: {report['error']}"
  lines = [f"fits {report['chip']} HBM   {'yes' if report['fits'] else 'no'}: "
           f"{report['per_device_bytes'] / GiB:.2f} of {report['hbm_bytes'] / GiB:.0f} GiB per chip"]
  if "step_seconds_lower_bound" in report:
    lines.append(f"roofline (estimate) step >= {report['step_seconds_lower_bound'] * 1e3:.1f} ms per chip "
                 f"(compute {report['compute_seconds'] * 1e3:.1f} ms from model FLOPs, memory "
                 f"{report['memory_seconds'] * 1e3:.1f} ms from XLA's bytes), so MFU <= "
                 f"{report['mfu_upper_bound']:.0%}")
  return "\n".join(lines)


# --- the dry run ------------------------------------------------------------------------------------------------------

def compile_stage(st, mesh, chip: Chip) -> dict[str, dict]:
  """{name: report} of each step program of one Stage, compiled for `mesh`'s TPU devices; a Stage that does not
  fit HBM gets {'fits': False, 'error': XLA's reason}."""
  from jaxtextgan import dryrun
  try:
    reports = dryrun.stage_reports(st, mesh)
  except Exception as e:  # noqa: BLE001  (only XLA's out-of-memory is a result; anything else re-raises)
    reason = out_of_memory(e)
    if reason is None:
      raise
    return {st.name: {"devices": int(mesh.size), "mesh": dict(mesh.shape), "error": reason, "chip": chip.name,
                      "hbm_bytes": chip.hbm_bytes, "fits": False}}
  for report in reports.values():
    report.update(chip_fields(report, chip))
  return reports


def compile_stages(config, mesh, chip: Chip) -> dict[str, dict]:
  """{name: report} of every step program `config` trains (`tasks.<objective>.dry_run_stages`), for TPU."""
  import importlib
  from jaxtextgan import dryrun
  task = importlib.import_module(f"jaxtextgan.tasks.{dryrun.check_objective(config)}")
  reports = {}
  for st in task.dry_run_stages(config, mesh):
    reports.update(compile_stage(st, mesh, chip))
  return reports


def batch_shards(config, devices: Sequence) -> int:
  """How many ways the global batch is split: mesh's data × fsdp."""
  from jaxtextgan import sharding as shd
  mesh = shd.make_mesh(tuple(config.mesh_shape), devices=devices)
  return mesh.shape["data"] * mesh.shape["fsdp"]


def with_batch(config, global_batch: int):
  """A copy of `config` with every batch field of its objective set to `global_batch`."""
  fields = BATCH_FIELDS.get(config.objective)
  if fields is None:
    raise InputError(f"--max_batch is not available for objective {config.objective!r}: use one of "
                     f"{', '.join(BATCH_FIELDS)}")
  out = config.copy_and_resolve_references()
  for field in fields:
    block, key = field.split(".")
    out[block][key] = global_batch
  return out


def largest_batch(config, devices: Sequence, chip: Chip, known: dict[int, dict] | None = None,
                  limit: int = 1024) -> tuple[int, dict[int, dict]]:
  """(largest per-chip batch, a power of two, whose every step fits HBM (0: none), {per-chip batch: reports}).

  `known`: {global batch: reports} already compiled (the config's own batch), not compiled again.
  """
  from jaxtextgan import sharding as shd
  shards = batch_shards(config, devices)
  tried, best, per_chip = {}, 0, 1
  while per_chip <= limit:
    global_batch = per_chip * shards
    if known and global_batch in known:
      reports = known[global_batch]
    else:
      trial = with_batch(config, global_batch)
      reports = compile_stages(trial, shd.make_mesh(tuple(trial.mesh_shape), devices=devices), chip)
    tried[per_chip] = reports
    fits = all(r["fits"] for r in reports.values())
    sizes = ", ".join(f"{r['per_device_bytes'] / GiB:.2f} GiB" if "per_device_bytes" in r else r["error"]
                      for r in reports.values())
    print(f"[max_batch] {per_chip} per chip ({global_batch} global): {'fits' if fits else 'does not fit'} "
          f"({sizes})", flush=True)
    if not fits:
      break
    best, per_chip = per_chip, per_chip * 2
  return best, tried


def dry_run(config, topology: str, max_batch: bool = False) -> dict[str, dict]:
  """`--dry_run --topology`: compiles the Stages for the slice with XLA:TPU and prints each step's per-chip report
  (and, with `max_batch`, the largest per-chip batch that fits)."""
  from jaxtextgan import dryrun
  from jaxtextgan import sharding as shd
  devices = topology_devices(topology)
  chip = chip_of(devices)
  try:
    mesh = shd.make_mesh(tuple(config.mesh_shape), devices=devices)
  except ValueError as e:
    raise InputError(f"config.mesh_shape={tuple(config.mesh_shape)} does not fit --topology={topology} "
                     f"({len(devices)} chips): {e}") from None
  print(f"[{topology}] {len(devices)} x {devices[0].device_kind} ({chip.name}: {chip.hbm_bytes / GiB:.0f} GiB HBM, "
        f"{chip.peak_flops / 1e12:.0f} TFLOP/s bf16, {chip.hbm_bandwidth / 1e9:.0f} GB/s), mesh {dict(mesh.shape)}",
        flush=True)
  reports = compile_stages(config, mesh, chip)
  for name, report in reports.items():
    body = dryrun.format_report(report) + "\n" if "error" not in report else ""
    print(f"[{config.objective} {name} on {topology}]\n{body}{format_chip(report)}\n", flush=True)
  if max_batch:
    first = next(iter(config[f.split(".")[0]][f.split(".")[1]] for f in BATCH_FIELDS.get(config.objective, ())))
    best, tried = largest_batch(config, devices, chip, known={first: dict(reports)})
    reports["max_batch"] = {"per_chip": best, "tried": tried}
    if not best:
      print("largest batch that fits: none (not even 1 per chip)", flush=True)
    for name, report in (tried[best] if best else {}).items():
      print(f"largest batch that fits: {best} per chip ({config.objective} {name}: "
            f"{report['per_device_bytes'] / GiB:.2f} GiB per chip" +
            (f"; roofline MFU <= {report['mfu_upper_bound']:.0%}, step >= "
             f"{report['step_seconds_lower_bound'] * 1e3:.1f} ms (estimate)" if "mfu_upper_bound" in report else "")
            + ")", flush=True)
  return reports
