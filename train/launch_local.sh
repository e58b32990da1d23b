#!/usr/bin/env bash
# Starts N local processes of `python -m train` that form one JAX job over
# 127.0.0.1 (gloo collectives on CPU), each faking D CPU devices.
#   train/launch_local.sh N [D] [python -m train arguments...]
# e.g. train/launch_local.sh 2 4 --preset tiny --workdir runs/tiny_2proc
set -euo pipefail
n=${1:?usage: launch_local.sh NUM_PROCESSES [DEVICES_PER_PROCESS] [args...]}; shift
d=1
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then d=$1; shift; fi
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu python -m train --coordinator "127.0.0.1:${port}" --num-processes "$n" \
    --process-id "$i" --local-devices "$d" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
