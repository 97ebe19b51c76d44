# Shared by the Stage-1 launchers (sourced, not run). The caller sets ENTRY and the defaults
# CFG, DATA_PATH, OUTPUT, MASTER_PORT, then sources this file with its own arguments.
#
# KEY=VALUE arguments set: CFG DATA_PATH OUTPUT BATCH_SIZE GPUS MASTER_ADDR MASTER_PORT NNODES
# NODE_RANK RDZV_BACKEND RDZV_ENDPOINT PYTHON. Every other argument goes to the Python entry
# point unchanged (e.g. --opts KEY VALUE, --check-saved-embed). GPUS is the number of processes
# on this node: one per GPU, or that many CPU processes (gloo) on a machine without CUDA.

GPUS=${GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-}
BATCH_SIZE=${BATCH_SIZE:-}
PYTHON=${PYTHON:-python}

extra=()
for arg in "$@"; do
  case "$arg" in
    CFG=*|DATA_PATH=*|OUTPUT=*|BATCH_SIZE=*|GPUS=*|MASTER_ADDR=*|MASTER_PORT=*|NNODES=*|\
NODE_RANK=*|RDZV_BACKEND=*|RDZV_ENDPOINT=*|PYTHON=*)
      printf -v "${arg%%=*}" '%s' "${arg#*=}" ;;
    *) extra+=("$arg") ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

args=(--cfg "$CFG" --data-path "$DATA_PATH" --output "$OUTPUT")
if [ -n "$BATCH_SIZE" ]; then args+=(--batch-size "$BATCH_SIZE"); fi

launcher=("$PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS" --nnodes "$NNODES")
if [ "$NNODES" -gt 1 ]; then
  launcher+=(--node_rank "$NODE_RANK" --rdzv_backend "$RDZV_BACKEND"
             --rdzv_endpoint "${RDZV_ENDPOINT:-$MASTER_ADDR:$MASTER_PORT}")
else
  launcher+=(--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

echo "launch: ${launcher[*]} $ENTRY ${args[*]} ${extra[*]}"
exec "${launcher[@]}" "$ENTRY" "${args[@]}" "${extra[@]}"
