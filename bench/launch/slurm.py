"""The SLURM executor (submitit): per cell a Checkpointable training job (requeued on preemption / time
limit, resumed from its last checkpoint, time-sliced to the partition limit), a sampling job array over
shards (afterok on training) and an evaluation job (afterok on the array). The driver may exit; state
lives in the run folders and the scheduler. Also the cluster-profile checks and scheduler queries.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.checkpoint import trust_checkpoints
from bench.launch.phases import evaluate_phase, sample_phase, train_with_points
from bench.launch.planning import PlannedCell, is_finished, prepare
from bench.method import ConfigError
from bench.store import RunFolder, now
from bench.suite import ClusterProfile

REPO_ROOT = Path(__file__).resolve().parents[2]


def distributed_env() -> dict[str, str]:
    """Map the SLURM task layout to torch.distributed's env:// variables (when more than one task)."""
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if ntasks <= 1:
        return {}
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return {"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": env.master_addr, "MASTER_PORT": str(env.master_port)}


def _checkpointable_base() -> type:
    try:
        import submitit
        return submitit.helpers.Checkpointable
    except ImportError:  # the local executor does not need submitit
        return object


class TrainJob(_checkpointable_base()):  # type: ignore[misc]
    """Checkpointable SLURM training job.

    Training runs in a worker thread so that submitit's signal handler (main thread) can ask the loop to
    stop at the next step boundary, wait for its checkpoint, and only then requeue: the requeued job
    resumes exactly from that checkpoint. ``trust``: read checkpoints with full pickle (--trust-checkpoint).
    """

    def __init__(self, trust: bool = False) -> None:
        self.trust = trust
        self._thread: threading.Thread | None = None
        self._box: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"trust": self.trust}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(bool(state.get("trust", False)))

    def __call__(self, run_dir: str) -> dict[str, Any]:
        distributed_env()
        self._box = {}

        def work() -> None:
            try:
                with trust_checkpoints(self.trust):   # set in this thread: context variables do not cross threads
                    # slices at the eval_every points keep their checkpoints for the evaluation job
                    self._box["result"] = train_with_points(run_dir, progress=False)
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self._box["error"] = err

        self._thread = threading.Thread(target=work, name="train", daemon=True)
        self._thread.start()
        while self._thread.is_alive():
            self._thread.join(0.5)           # short joins: the main thread stays responsive to signals
        if "error" in self._box:
            raise self._box["error"]
        result = self._box["result"]
        if not result.get("done"):
            raise RuntimeError(f"training stopped early without a requeue: {result}")
        return result

    def checkpoint(self, run_dir: str) -> Any:
        import submitit
        from bench.train import request_stop

        # train() clears the flag when it starts: repeat the request until the loop has returned
        while self._thread is not None and self._thread.is_alive():
            request_stop()
            self._thread.join(1.0)           # the loop writes its checkpoint at a step boundary, then returns
        RunFolder(run_dir).record("train", {"requeued_at": now()})
        return submitit.helpers.DelayedSubmission(TrainJob(self.trust), run_dir)


class SampleJob(_checkpointable_base()):  # type: ignore[misc]
    """One sampling shard; requeued on preemption / time limit (finished settings' files are kept)."""

    def __init__(self, trust: bool = False) -> None:
        self.trust = trust

    def __call__(self, run_dir: str, shard: int) -> list[str]:
        with trust_checkpoints(self.trust):
            return sample_phase(run_dir, shard)


class EvaluateJob(_checkpointable_base()):  # type: ignore[misc]
    """Evaluation of a cell; requeued on preemption / time limit (it starts over)."""

    def __init__(self, trust: bool = False) -> None:
        self.trust = trust

    def __call__(self, run_dir: str) -> dict[str, Any]:
        with trust_checkpoints(self.trust):
            return evaluate_phase(run_dir)


@dataclass
class Submitted:
    cell_id: str
    train: str
    sample: list[str]
    evaluate: str
    jobs: list[Any] = field(default_factory=list, repr=False)


def submit_cell(pc: PlannedCell, suite_name: str, profile: Any, limits: dict[str, Any],
                trust: bool = False) -> Submitted:
    """Submit train → sample array → evaluate for one cell, chained with afterok dependencies."""
    import submitit

    rf = prepare(pc, suite_name)
    rf.clear_error()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    folder = rf.jobs_folder(stamp) / "%j"
    shards = int(pc.cell.sampling["shards"])

    def executor(kind: str, dependency: str | None) -> Any:
        params = executor_parameters(profile, kind, limits)
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                   slurm_max_num_timeout=params.pop("slurm_max_num_timeout"))
        params["slurm_setup"] = [f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
                                 *params.get("slurm_setup", [])]
        extra = dict(params.pop("slurm_additional_parameters", {}))
        if dependency:
            extra.update(dependency=dependency, kill_on_invalid_dep="yes")
        ex.update_parameters(name=f"{suite_name}:{pc.cell.id}:{kind}", slurm_additional_parameters=extra, **params)
        return ex

    train_job = executor("train", None).submit(TrainJob(trust), str(rf.path))
    ex = executor("sample", f"afterok:{train_job.job_id}")
    sample_jobs = ex.map_array(SampleJob(trust), [str(rf.path)] * shards, list(range(shards)))
    array_id = sample_jobs[0].job_id.split("_")[0]
    eval_job = executor("evaluate", f"afterok:{array_id}").submit(EvaluateJob(trust), str(rf.path))
    sub = Submitted(pc.cell.id, train_job.job_id, [j.job_id for j in sample_jobs], eval_job.job_id,
                    [train_job, *sample_jobs, eval_job])
    old = rf.read_manifest().get("parts", {}).get("driver", {}).get("jobs", {})
    history = list(old.get("history", [])) + ([{k: old[k] for k in ("train", "sample", "evaluate", "submitted_at")
                                                if k in old}] if old.get("train") else [])
    rf.record("driver", {"jobs": {"train": sub.train, "sample": sub.sample, "evaluate": sub.evaluate,
                                  "sample_array": array_id, "submitted_at": now(), "folder": str(folder.parent),
                                  "history": history}})
    rf.set_status("pending")
    return sub


def run_slurm(planned: list[PlannedCell], suite_name: str, profile: Any,
              log: Callable[[str], None] = print, trust: bool = False) -> dict[str, Submitted | str]:
    """Submit every unfinished cell not already in flight; a failed submission never stops the others.
    ``trust``: the jobs read checkpoints with full pickle (--trust-checkpoint)."""
    limits = preflight(profile)
    out: dict[str, Submitted | str] = {}
    for pc in planned:
        rf = RunFolder(pc.run_dir)
        if rf.cell_file.is_file() and is_finished(rf):
            out[pc.cell.id] = "done"
            log(f"{pc.cell.id}: done already, skipped")
            continue
        ids = _job_ids(rf)
        live = live_jobs(ids) if ids else {}
        if live:
            out[pc.cell.id] = "in flight"
            log(f"{pc.cell.id}: in flight ({', '.join(f'{k} {v}' for k, v in live.items())}), not resubmitted")
            continue
        try:
            sub = submit_cell(pc, suite_name, profile, limits, trust)
            out[pc.cell.id] = sub
            log(f"{pc.cell.id}: submitted train {sub.train} -> sample {sub.sample[0].split('_')[0]}"
                f"[{len(sub.sample)}] -> evaluate {sub.evaluate}")
        except Exception as err:  # noqa: BLE001
            line = RunFolder(pc.run_dir).fail("submit", _explain_submit_error(err))
            out[pc.cell.id] = "failed"
            log(f"{pc.cell.id}: FAILED: {line}")
    return out


def _job_ids(rf: RunFolder) -> list[str]:
    jobs = rf.read_manifest().get("parts", {}).get("driver", {}).get("jobs", {})
    ids = [jobs.get("train"), *(jobs.get("sample") or []), jobs.get("evaluate")]
    return [str(i) for i in ids if i]


def _explain_submit_error(err: BaseException) -> str:
    text = str(err)
    for line in text.splitlines():
        if "sbatch: error" in line:
            return line.strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def wait_slurm(submitted: dict[str, Submitted | str], poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    """Block until every submitted job has ended (sacct-backed, catches pickle-less failures)."""
    t0 = time.time()
    jobs = [j for s in submitted.values() if isinstance(s, Submitted) for j in s.jobs]
    while True:
        pending = [j for j in jobs if not j.done(force_check=True)]
        if not pending:
            return
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise TimeoutError(f"{len(pending)} jobs still running after {timeout_s:.0f}s")
        time.sleep(poll_s)


# ---- cluster profile checks and scheduler queries ---------------------------------------------
def _sh(*cmd: str, timeout: float = 30) -> tuple[int, str, str]:
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{cmd[0]}: timed out"
    return r.returncode, r.stdout, r.stderr


def slurm_available() -> bool:
    return shutil.which("sinfo") is not None


def parse_slurm_time(text: str) -> int | None:
    """'infinite' -> None; '3:00' (min:sec) / '1:00:00' / '2-00:00:00' -> minutes (rounded down)."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(x) for x in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, sec = parts[-3:]
    return days * 1440 + h * 60 + m + sec // 60


def preflight(profile: ClusterProfile) -> dict[str, Any]:
    """Check the profile against the live cluster before anything is submitted (one-line errors).

    Returns the partition's limits: {"max_time_min": int | None, "gres": str}."""
    if not slurm_available():
        raise ConfigError(f"cluster profile {profile.name!r}: SLURM is not available on this machine (no `sinfo`); "
                          "use --executor local, or start the CI cluster with slurm/ci-slurm-up.sh")
    rc, out, err = _sh("sinfo", "-h", "-o", "%P|%l|%G")
    if rc != 0:
        raise ConfigError(f"cluster profile {profile.name!r}: `sinfo` failed: {(err or out).strip()}")
    parts: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        name, limit, gres = (line.split("|") + ["", ""])[:3]
        name = name.rstrip("*")
        entry = parts.setdefault(name, {"max_time_min": parse_slurm_time(limit), "gres": set()})
        entry["gres"].add(gres.strip())
    for kind in ("train", "sample", "evaluate"):
        part = profile.resources(kind).partition or profile.partition
        if part not in parts:
            raise ConfigError(f"cluster profile {profile.name!r}: unknown partition {part!r} ({kind}); "
                              f"partitions: {', '.join(sorted(parts))}")
        gpus = profile.resources(kind).gpus_per_node
        gres = {g for g in parts[part]["gres"] if g and g != "(null)"}
        if gpus and not any(g.startswith("gpu") for g in gres):
            raise ConfigError(f"cluster profile {profile.name!r}: {kind} jobs ask for {gpus} GPU(s) per node but "
                              f"partition {part!r} has no GPUs (sinfo GRES: {', '.join(sorted(parts[part]['gres']))}); "
                              "set gpus_per_node: 0 or use a GPU partition")
    return {p: {"max_time_min": v["max_time_min"]} for p, v in parts.items()}


def executor_parameters(profile: ClusterProfile, kind: str, limits: dict[str, Any]) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one job kind; training is time-sliced to the partition limit."""
    r = profile.resources(kind)
    part = r.partition or profile.partition
    limit = (limits.get(part) or {}).get("max_time_min")
    time_min = r.time_min if limit is None else min(r.time_min, limit)
    tasks = max(1, r.gpus_per_node) if kind == "train" else 1
    params: dict[str, Any] = {
        "timeout_min": int(time_min), "nodes": r.nodes if kind == "train" else 1, "tasks_per_node": tasks,
        "cpus_per_task": r.cpus_per_task, "mem_gb": r.mem_gb, "slurm_partition": part,
        # training needs time to checkpoint; sampling / evaluation only need to requeue
        "slurm_signal_delay_s": profile.signal_delay_s if kind == "train" else min(profile.signal_delay_s, 30), "slurm_max_num_timeout": profile.max_requeues,
        "slurm_setup": list(profile.setup), "slurm_additional_parameters": dict(profile.extra),
    }
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    if kind == "sample" and profile.array_parallelism:
        params["slurm_array_parallelism"] = profile.array_parallelism
    for key, value in (("slurm_account", profile.account), ("slurm_qos", profile.qos),
                       ("slurm_constraint", profile.constraint)):
        if value:
            params[key] = value
    return params


def _base_id(job_id: str) -> str:
    return job_id.split("_")[0]


def scheduler_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """job id -> {"state", "reason"} from squeue (live jobs) and sacct (finished ones)."""
    if not job_ids or not slurm_available():
        return {}
    out: dict[str, dict[str, str]] = {}
    bases = sorted({_base_id(j) for j in job_ids})
    rc, text, _ = _sh("squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r")
    if rc == 0:
        for line in text.splitlines():
            jid, state, reason = (line.split("|") + ["", ""])[:3]
            out[jid.strip()] = {"state": state.strip(), "reason": reason.strip()}
    missing = [j for j in job_ids if j not in out]
    if missing:
        rc, text, _ = _sh("sacct", "-n", "-P", "-X", "-j", ",".join(bases), "-o", "JobID,State,ExitCode")
        if rc == 0:
            for line in text.splitlines():
                jid, state, code = (line.split("|") + ["", ""])[:3]
                if jid.strip() in missing:
                    out[jid.strip()] = {"state": state.strip(), "reason": f"exit {code.strip()}"}
    return out


LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def live_jobs(job_ids: list[str]) -> dict[str, str]:
    return {j: s["state"] for j, s in scheduler_states(job_ids).items() if s["state"].split()[0] in LIVE_STATES}


def cancel_jobs(job_ids: list[str]) -> list[str]:
    live = sorted(live_jobs(job_ids))
    if live:
        rc, out, err = _sh("scancel", *sorted({_base_id(j) for j in live}))
        if rc != 0:
            raise RuntimeError(f"scancel failed: {(err or out).strip()}")
    return live
