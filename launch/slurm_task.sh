#!/bin/bash
# One process of a SLURM job (started by srun, see slurm.sbatch): turns SLURM's variables into ext5's
# jax.distributed flags and execs `t5x COMMAND --multiprocess_gpu ... "$@"`. Arguments pass through
# verbatim ("$@"), so gin bindings with quotes and spaces arrive intact.
set -euo pipefail
: "${SLURM_PROCID:?not under srun (SLURM_PROCID unset); submit with: sbatch launch/slurm.sbatch ...}"
: "${SLURM_NTASKS:?SLURM_NTASKS unset}"
: "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST unset}"
# Process 0 runs on the first node of the allocation; it hosts the coordinator.
coordinator_host="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"
port="${EXT5_COORDINATOR_PORT:-12345}"
read -r -a t5x <<< "${EXT5_T5X:-t5x}"
exec "${t5x[@]}" "${EXT5_COMMAND:-train}" \
  --multiprocess_gpu \
  --coordinator_address="${coordinator_host}:${port}" \
  --process_count="$SLURM_NTASKS" \
  --process_index="$SLURM_PROCID" \
  "$@"
