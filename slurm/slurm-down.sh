#!/bin/bash
# Stop the daemons started by slurm-up.sh by the PIDs in their own pid files (never by name).
# Jobs are cancelled first: slurmstepd and job processes are not children of slurmd and would survive.
stop_all() { # args: pid files
  local pids=() f p
  for f in "$@"; do
    [ -s "$f" ] || continue
    p=$(cat "$f"); kill -0 "$p" 2>/dev/null && { kill -TERM "$p"; pids+=("$p"); }
  done
  for _ in $(seq 1 150); do          # up to 15 s
    local alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { echo "slurm-down: SIGKILL $p"; kill -KILL "$p"; }; done
  rm -f "$@"
}
if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
  ids=$(squeue -h -o %A 2>/dev/null || true)
  [ -n "$ids" ] && scancel $ids
  for _ in $(seq 1 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
fi
# slurm daemons first (slurmctld flushes job records to slurmdbd), then the database and munge
stop_all /run/slurmd.pid /run/slurmctld.pid
stop_all /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid
