#!/usr/bin/env bash
# Multi-node SLURM launcher for jaxtextgan: writes an sbatch script and submits it.
# Run `launch/slurm.sh --help`; --dry-run prints the sbatch script and the command instead of submitting.
# shellcheck disable=SC2016  # single-quoted $VARS here are text of the generated job script, expanded there.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --nodes=N --gpus-per-node=G --config=FILE --workdir=DIR [options]
             [--config.KEY=VALUE ...] [-- MAIN_FLAGS ...]

Submits one SLURM job that runs jaxtextgan.main on N nodes with srun: one process per node
driving all G GPUs of its node (default), or with --per-gpu one process per GPU (N*G processes).
The processes join one JAX job with explicit flags: the coordinator is the first node of
\$SLURM_JOB_NODELIST (scontrol show hostnames), --num_processes=\$SLURM_NTASKS,
--process_id=\$SLURM_PROCID. JAX_LOCAL_DEVICE_IDS tells each process its GPUs (all of the node's
GPUs, or GPU \$SLURM_LOCALID with --per-gpu); without it, jax.distributed.initialize() would give
a one-process-per-node job only GPU 0 under SLURM.

The job runs from --chdir (default: the current directory), so relative --config paths resolve
there; the venv and the workdir must be on a filesystem all nodes share.

Options (environment variable in brackets):
  --nodes N             number of nodes (required)
  --gpus-per-node G     GPUs per node (required)
  --per-gpu             one process per GPU instead of one per node
  --config FILE         config file, e.g. configs/gan.py [JTG_CONFIG] (required)
  --workdir DIR         run directory on a shared filesystem [JTG_WORKDIR] (required)
  --config.KEY=VALUE    config override passed through to jaxtextgan.main (repeatable)
  -- MAIN_FLAGS         everything after -- is passed to jaxtextgan.main unchanged
  --python PATH         interpreter on the nodes [JTG_PYTHON; default: \$VIRTUAL_ENV/bin/python,
                        else python3]
  --job-name NAME       (default: jaxtextgan)
  --partition P, --account A, --time T, --cpus-per-task C   the matching #SBATCH lines
  --sbatch-flag FLAG    any other #SBATCH flag, repeatable, e.g. --sbatch-flag=--qos=high
  --prelude CMD         shell line run before srun, repeatable (before 'set -u', so 'module load' and
                        'source venv/bin/activate' work), e.g. --prelude='module load cuda/12.4'
  --port PORT           coordinator port (default: from the job id, 61440 + SLURM_JOB_ID % 4096,
                        as jax.distributed.initialize() picks it on SLURM)
  --chdir DIR           directory the job runs in (default: the current directory)
  --output PATTERN      SLURM log file (default: slurm-%x-%j.out, relative to --chdir)
  --save FILE           write the sbatch script to FILE and submit FILE (default: submit on stdin)
  --dry-run             print the sbatch script and the command ('+ ' line) instead of submitting
  -h, --help            this help

Example:
  $PROG --nodes=2 --gpus-per-node=8 --partition=gpu --time=24:00:00 \\
        --config=configs/gan.py --workdir=/shared/runs/gan1 --config.train.steps=20000
EOF
}

NODES=""
GPUS_PER_NODE=""
PER_GPU=0
PYTHON=${JTG_PYTHON:-}
JOB_NAME=jaxtextgan
SBATCH_FLAGS=()
PRELUDE=()
PORT=""
CHDIR=$PWD
OUTPUT=slurm-%x-%j.out
SAVE=""

# parse_option ARGS...: this launcher's own options (common.sh's parse_args does the rest); no subcommands.
parse_option() {
  case $1 in
    --per-gpu) PER_GPU=1 ;;
    --nodes|--nodes=*) take_value "$@"; NODES=$VALUE ;;
    --gpus-per-node|--gpus-per-node=*) take_value "$@"; GPUS_PER_NODE=$VALUE ;;
    --python|--python=*) take_value "$@"; PYTHON=$VALUE ;;
    --job-name|--job-name=*) take_value "$@"; JOB_NAME=$VALUE ;;
    --partition|--partition=*) take_value "$@"; SBATCH_FLAGS+=(--partition="$VALUE") ;;
    --account|--account=*) take_value "$@"; SBATCH_FLAGS+=(--account="$VALUE") ;;
    --time|--time=*) take_value "$@"; SBATCH_FLAGS+=(--time="$VALUE") ;;
    --cpus-per-task|--cpus-per-task=*) take_value "$@"; SBATCH_FLAGS+=(--cpus-per-task="$VALUE") ;;
    --sbatch-flag|--sbatch-flag=*) take_value "$@"; SBATCH_FLAGS+=("$VALUE") ;;
    --prelude|--prelude=*) take_value "$@"; PRELUDE+=("$VALUE") ;;
    --port|--port=*) take_value "$@"; PORT=$VALUE ;;
    --chdir|--chdir=*) take_value "$@"; CHDIR=$VALUE ;;
    --output|--output=*) take_value "$@"; OUTPUT=$VALUE ;;
    --save|--save=*) take_value "$@"; SAVE=$VALUE ;;
    -*) return 1 ;;
    *) die_usage "unexpected argument '$1' (see --help)" ;;
  esac
}

check() {
  [[ -n $NODES ]] || die_usage "--nodes is required"
  [[ -n $GPUS_PER_NODE ]] || die_usage "--gpus-per-node is required"
  [[ -n $CONFIG ]] || die_usage "--config is required (or set JTG_CONFIG)"
  [[ -n $WORKDIR ]] || die_usage "--workdir is required (or set JTG_WORKDIR)"
  [[ $NODES =~ ^[1-9][0-9]*$ ]] || die_usage "--nodes wants a positive number, got '$NODES'"
  [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die_usage "--gpus-per-node wants a positive number, got '$GPUS_PER_NODE'"
  [[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || die_usage "--port wants a number, got '$PORT'"
  [[ $JOB_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die_usage "--job-name may only use letters, digits, _ . -"
  local flag
  for flag in "${SBATCH_FLAGS[@]}"; do
    [[ $flag == -* && $flag != *$'\n'* ]] || die_usage "--sbatch-flag wants one flag like --qos=high, got '$flag'"
  done
}

# The sbatch script, on stdout.
sbatch_script() {
  local tasks_per_node=1 device_ids port python flag line
  if ((PER_GPU)); then
    tasks_per_node=$GPUS_PER_NODE
    device_ids='"$SLURM_LOCALID"'
  else
    device_ids=$(seq -s, 0 $((GPUS_PER_NODE - 1)))
  fi
  if [[ -n $PORT ]]; then port=$PORT; else port='$((61440 + SLURM_JOB_ID % 4096))'; fi
  python=${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}
  python=${python:-python3}
  echo '#!/bin/bash'
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$tasks_per_node"
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --chdir=$CHDIR"
  echo "#SBATCH --output=$OUTPUT"
  for flag in "${SBATCH_FLAGS[@]}"; do echo "#SBATCH $flag"; done
  if ((${#PRELUDE[@]})); then  # 'module load' and venv activation scripts may read unset variables
    echo 'set -eo pipefail'
    for line in "${PRELUDE[@]}"; do echo "$line"; done
    echo 'set -u'
  else
    echo 'set -euo pipefail'
  fi
  echo 'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk '"'NR == 1'"'):'"$port"'"'
  echo 'export COORDINATOR PYTHONUNBUFFERED=1'
  echo 'echo "jaxtextgan: $SLURM_NTASKS processes on $SLURM_JOB_NUM_NODES nodes, coordinator $COORDINATOR"'
  # Each task: its GPUs, then the training command with its own process id (expanded inside the task).
  echo '# Each task sets its GPUs and appends its own process id ($SLURM_PROCID expands inside the task).'
  echo '# shellcheck disable=SC2016'
  echo "srun --kill-on-bad-exit=1 bash -c 'export JAX_LOCAL_DEVICE_IDS=$device_ids; exec \"\$@\"" \
    "--coordinator_address=\"\$COORDINATOR\" --num_processes=\"\$SLURM_NTASKS\" --process_id=\"\$SLURM_PROCID\"' \\"
  echo "  jaxtextgan $(quote_cmd "$python" -m jaxtextgan.main --config="$CONFIG" --workdir="$WORKDIR" "${MAIN_ARGS[@]}")"
}

main() {
  parse_args "$@"
  check
  local script
  script=$(sbatch_script)
  if [[ -n $SAVE ]]; then
    say '+ cat >%s <<'"'EOF_SBATCH'"'\n%s\nEOF_SBATCH\n' "$(q "$SAVE")" "$script"
    show "" sbatch "$SAVE"
    if ((!DRY_RUN)); then printf '%s\n' "$script" >"$SAVE"; sbatch "$SAVE"; fi
  else
    say '+ sbatch <<'"'EOF_SBATCH'"'\n%s\nEOF_SBATCH\n' "$script"
    if ((!DRY_RUN)); then printf '%s\n' "$script" | sbatch; fi
  fi
}

main "$@"
