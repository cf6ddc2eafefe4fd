"""Planning and executing cells, one concern per module:

- ``planning``: matched-compute planning (budget -> images per stage) and run-folder preparation;
- ``cost``: GPU-hours and peak memory per rank of a planned cell (dry runs print them);
- ``phases``: the per-cell phases (train -> sample shards -> evaluate), idempotent;
- ``curve``: intermediate evaluation at the suite's ``eval_every`` points (kept checkpoints);
- ``scoring``: one sampling setting scored into its metrics.json row;
- ``local``: the local executor (cell after cell, in this process);
- ``slurm``: the SLURM executor (submitit jobs chained by dependencies) and scheduler queries.

The names below are the package's interface (``from bench.launch import plan_cells, run_slurm, ...``).
"""
from bench.launch.cost import MemoryEstimate, gpu_hours, peak_memory
from bench.launch.local import run_local
from bench.launch.phases import (MetricsFn, default_metrics, evaluate_phase, sample_phase, shard_path,
                                 train_phase, train_with_points)
from bench.launch.planning import PlannedCell, budget_flops, is_finished, plan_cells, prepare
from bench.launch.slurm import (EvaluateJob, SampleJob, Submitted, TrainJob, _explain_submit_error, cancel_jobs,
                                distributed_env, executor_parameters, live_jobs, parse_slurm_time, preflight,
                                run_slurm, scheduler_states, slurm_available, submit_cell, wait_slurm)

__all__ = ["PlannedCell", "plan_cells", "budget_flops", "prepare", "is_finished", "MemoryEstimate", "gpu_hours",
           "peak_memory", "MetricsFn", "train_phase", "train_with_points", "sample_phase", "shard_path",
           "evaluate_phase",
           "default_metrics", "run_local", "TrainJob", "SampleJob", "EvaluateJob", "Submitted", "submit_cell",
           "run_slurm", "wait_slurm", "distributed_env", "preflight", "parse_slurm_time", "scheduler_states",
           "live_jobs", "cancel_jobs", "executor_parameters", "slurm_available", "_explain_submit_error"]
