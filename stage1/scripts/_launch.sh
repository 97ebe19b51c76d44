# Shared by the Stage-1 launchers (sourced, not run). The caller sets ENTRY, CFG (its default
# config) and MASTER_PORT, then sources this file with its own arguments.
#
# KEY=VALUE arguments set: CFG DATA_PATH OUTPUT BATCH_SIZE GPUS MASTER_ADDR MASTER_PORT NNODES
# NODE_RANK RDZV_BACKEND RDZV_ENDPOINT PYTHON. DATA_PATH, OUTPUT and BATCH_SIZE are passed on only
# when given, so the config's own DATA.DATA_PATH, OUTPUT and DATA.BATCH_SIZE hold otherwise; the
# launch settings (GPUS ... PYTHON) may also come from the environment. Any other upper-case
# KEY=VALUE is an error (a misspelt setting, or a config key without --opts); every other
# argument goes to the Python entry point unchanged (e.g. --opts KEY VALUE, --check-saved-embed).
# Relative paths are taken from the repository root. GPUS is the number of processes on this
# node: one per GPU, or that many CPU processes (gloo) on a machine without CUDA. One process on
# one node runs the entry point directly (a world of one needs no process group); more run under
# torchrun, and the workers' error lines are printed once each, after torchrun's report.

SETTINGS=(CFG DATA_PATH OUTPUT BATCH_SIZE GPUS MASTER_ADDR MASTER_PORT NNODES NODE_RANK
          RDZV_BACKEND RDZV_ENDPOINT PYTHON)
unset DATA_PATH OUTPUT BATCH_SIZE STAGE1_ERROR_DIR
GPUS=${GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-}
PYTHON=${PYTHON:-python}

fail() {  # a launcher usage error: one line, exit status 2 (as for argparse's usage errors)
  printf 'error: %s\n' "$1" >&2
  exit 2
}

extra=()
unknown=()
for arg in "$@"; do
  case "$arg" in
    CFG=*|DATA_PATH=*|OUTPUT=*|BATCH_SIZE=*|GPUS=*|MASTER_ADDR=*|MASTER_PORT=*|NNODES=*|\
NODE_RANK=*|RDZV_BACKEND=*|RDZV_ENDPOINT=*|PYTHON=*)
      printf -v "${arg%%=*}" '%s' "${arg#*=}" ;;
    *)
      if [[ $arg =~ ^[A-Z][A-Z0-9_.]*= ]]; then unknown+=("$arg"); fi
      extra+=("$arg") ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

command -v "$PYTHON" >/dev/null 2>&1 || fail "PYTHON=$PYTHON is not a command here — \
activate the project's environment or give PYTHON=/path/to/python"
if [ ${#unknown[@]} -gt 0 ]; then
  key=${unknown[0]%%=*}
  if [[ $key == *.* ]]; then
    fail "${unknown[0]} is not a launcher setting — config keys go after --opts: \
--opts $key ${unknown[0]#*=}"
  fi
  near=$("$PYTHON" -I -c 'import difflib, sys
print(" ".join(difflib.get_close_matches(sys.argv[1], sys.argv[2:], 1, 0.6)))' \
    "$key" "${SETTINGS[@]}")
  if [ -n "$near" ]; then
    fail "${unknown[0]} is not a launcher setting — did you mean $near=${unknown[0]#*=}?"
  fi
  fail "${unknown[0]} is not a launcher setting — use one of ${SETTINGS[*]}; config keys \
go after --opts (--opts KEY VALUE)"
fi

positive() {  # NAME VALUE HINT: VALUE must be a whole number >= 1
  [[ $2 =~ ^[1-9][0-9]{0,8}$ ]] || fail "$1=$2 is not a whole number >= 1 — $3"
}
positive GPUS "$GPUS" "give the number of processes per node, e.g. GPUS=1"
positive NNODES "$NNODES" "give the number of nodes, e.g. NNODES=1"
[[ $NODE_RANK =~ ^(0|[1-9][0-9]{0,8})$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] ||
  fail "NODE_RANK=$NODE_RANK is not in 0..$((NNODES - 1)) — give this node's index among \
the NNODES=$NNODES nodes"
[[ $MASTER_PORT =~ ^[1-9][0-9]{0,4}$ ]] && [ "$MASTER_PORT" -le 65535 ] ||
  fail "MASTER_PORT=$MASTER_PORT is not a port number — give a free TCP port in 1..65535, \
e.g. MASTER_PORT=29500"
for key in DATA_PATH OUTPUT BATCH_SIZE; do
  if [ -n "${!key+x}" ] && [ -z "${!key}" ]; then
    fail "$key= is empty — give a value, or leave $key out to use the config's"
  fi
done
if [ -n "${BATCH_SIZE+x}" ]; then
  positive BATCH_SIZE "$BATCH_SIZE" "give the batch per process, or leave BATCH_SIZE out to \
use the config's DATA.BATCH_SIZE"
fi
[ -e "$CFG" ] || fail "CFG=$CFG does not exist — give a YAML file from stage1/configs/ \
(relative paths start at $PWD)"
[ -f "$CFG" ] || fail "CFG=$CFG is not a file — give a YAML file from stage1/configs/"

args=(--cfg "$CFG")
if [ -n "${DATA_PATH+x}" ]; then args+=(--data-path "$DATA_PATH"); fi
if [ -n "${OUTPUT+x}" ]; then args+=(--output "$OUTPUT"); fi
if [ -n "${BATCH_SIZE+x}" ]; then args+=(--batch-size "$BATCH_SIZE"); fi

if [ "$GPUS" -eq 1 ] && [ "$NNODES" -eq 1 ]; then
  echo "launch: $PYTHON $ENTRY ${args[*]} ${extra[*]}"
  exec "$PYTHON" "$ENTRY" "${args[@]}" "${extra[@]}"
fi

launcher=("$PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS" --nnodes "$NNODES")
if [ "$NNODES" -gt 1 ]; then
  launcher+=(--node_rank "$NODE_RANK" --rdzv_backend "$RDZV_BACKEND"
             --rdzv_endpoint "${RDZV_ENDPOINT:-$MASTER_ADDR:$MASTER_PORT}")
else
  launcher+=(--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

# Each worker writes its error line here (stage1/common/cli.py), printed once torchrun has ended.
STAGE1_ERROR_DIR=$(mktemp -d "${TMPDIR:-/tmp}/stage1-errors.XXXXXX")
export STAGE1_ERROR_DIR
trap 'rm -rf "$STAGE1_ERROR_DIR"' EXIT

echo "launch: ${launcher[*]} $ENTRY ${args[*]} ${extra[*]}"
"${launcher[@]}" "$ENTRY" "${args[@]}" "${extra[@]}" &
child=$!
# torchrun runs in the background so that signals reach it through these traps.
trap 'kill -TERM "$child" 2>/dev/null || true' TERM HUP
trap 'kill -INT "$child" 2>/dev/null || true' INT
while :; do
  if wait "$child"; then status=0; else status=$?; fi
  kill -0 "$child" 2>/dev/null || break  # still running: a trapped signal ended the wait
done

shopt -s nullglob
reports=("$STAGE1_ERROR_DIR"/rank*.txt)
if [ "$status" -ne 0 ] && [ ${#reports[@]} -gt 0 ]; then
  awk '!seen[$0]++' "${reports[@]}" >&2
  exit 1  # a worker's status after a user error (EXIT_USER_ERROR in stage1/common/cli.py)
fi
exit "$status"
