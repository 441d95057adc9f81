# shellcheck shell=bash
# Sourced by launch/tpu_vm.sh, gpu.sh and slurm.sh (not run on its own): quoting and printing commands, --dry-run,
# and the option loop with the options every launcher takes.
# Bash 3.2 (macOS's /bin/bash) is enough: no mapfile, and empty arrays are expanded as ${a[@]+"${a[@]}"}.

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

# The options every launcher takes, and their defaults.
SUBCOMMAND=""
CONFIG=${JTG_CONFIG:-}
# A local or mounted path, or a bucket: run outputs and checkpoints go through etils.epath (and orbax), e.g.
#   JTG_WORKDIR=gs://BUCKET/runs/gan1 launch/tpu_vm.sh run --name=jtg --zone=us-central2-b --config=configs/gan.py
# (a gs:// workdir needs gcsfs on the workers for epath, and google-cloud-storage for TensorBoard's events).
WORKDIR=${JTG_WORKDIR:-}
MAIN_ARGS=()
DRY_RUN=0

die_usage() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }

# q ARG: ARG quoted for a POSIX shell (single quotes when needed; '--flag=' stays outside them), so printed
# commands can be pasted back into a shell.
q() {
  local s=$1 sq="'\\''" prefix="" escaped
  if [[ -n $s && $s != *[!A-Za-z0-9_./:=,@%+^-]* ]]; then printf '%s' "$s"; return; fi
  if [[ $s =~ ^--[A-Za-z0-9_.-]+= ]]; then prefix=${BASH_REMATCH[0]}; s=${s#"$prefix"}; fi
  escaped=${s//\'/$sq}
  printf "%s'%s'" "$prefix" "$escaped"
}

# quote_cmd ARG...: the arguments as one shell-quoted command line.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do out+="${out:+ }$(q "$arg")"; done
  printf '%s' "$out"
}

# say FORMAT ARG...: printf to stdout under --dry-run, else to stderr (a real run echoes its commands there).
say() {
  # shellcheck disable=SC2059  # FORMAT is the caller's
  if ((DRY_RUN)); then printf "$@"; else printf "$@" >&2; fi
}

# show SUFFIX CMD...: prints '+ CMD SUFFIX'.
show() {
  local suffix=$1; shift
  say '+ %s%s\n' "$(quote_cmd "$@")" "$suffix"
}

# run CMD...: prints '+ CMD' and runs it unless --dry-run.
run() { show "" "$@"; if ((DRY_RUN)); then return 0; fi; "$@"; }

# note TEXT...: prints '# TEXT', a comment between the commands.
note() { say '# %s\n' "$*"; }

# take_value ARGS...: sets VALUE from '--opt=value' or '--opt value' and NSHIFT to the words used.
take_value() {
  if [[ $1 == --*=* ]]; then VALUE=${1#*=}; NSHIFT=1
  elif (($# >= 2)); then VALUE=$2; NSHIFT=2
  else die_usage "$1 needs a value"; fi
}

# parse_args ARGS...: the launcher's `parse_option ARGS...` takes its own options (with take_value) and returns 1
# on any other word; the options every launcher takes, and the subcommand, are handled here.
parse_args() {
  while (($#)); do
    NSHIFT=1
    parse_option "$@" || case $1 in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --config.*) MAIN_ARGS+=("$1") ;;
      --config|--config=*) take_value "$@"; CONFIG=$VALUE ;;
      --workdir|--workdir=*) take_value "$@"; WORKDIR=$VALUE ;;
      --) shift; MAIN_ARGS+=("$@"); break ;;
      -*) die_usage "unknown option $1 (see --help)" ;;
      *) [[ -z $SUBCOMMAND ]] || die_usage "unexpected argument '$1' (see --help)"; SUBCOMMAND=$1 ;;
    esac
    shift "$NSHIFT"
  done
}
