"""``--launcher slurm`` (:mod:`cpc_fast.cli.slurm`): the options, the generated job script,
and the jobs run on this machine, preempted and requeued, without a cluster.

* submitit's local executor runs the same submission and the same job as on SLURM
  (``cpc_fast.cli.slurm.CLUSTER = "local"``); SIGUSR2 to the job's task alone: it passes the
  signal on to its workers, which save, and submitit requeues the job, which resumes.
* A fake SLURM on the PATH (tests/fake_slurm.py) records the sbatch script (GPUs, nodes,
  signal, requeue, the user's options) and runs it here: a pre-training job of two "nodes"
  (one c10d rendezvous), and an experiment job array of two workers sharing the folder; each
  is sent SLURM's signal once (``scancel --signal=USR2``, to every process of the job), and
  requeues itself (``scontrol requeue``).

The pre-training jobs end with the weights of the uninterrupted two-process run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import one_error_line, run_main
from optional_deps import need
from preemption_harness import E2E_STEPS, FLAGS, differing_weights

from cpc_fast.cli import slurm
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_state

SLURM = ["--launcher", "slurm", "--time", "10"]


# --------------------------------------------------------------------------- the options


@pytest.mark.parametrize(
    "limit, minutes",
    [("90", 90), ("5:30", 6), ("4:00:00", 240), ("1-0", 1440), ("1-2:30", 1590), ("0-0:0:1", 1)],
)
def test_slurm_time_limits_in_minutes(limit, minutes):
    assert slurm.minutes(limit) == minutes


@pytest.mark.parametrize("limit", ["", "1h", "0", "1:2:3:4", "-5"])
def test_a_bad_time_limit_is_refused(limit):
    with pytest.raises(UserInputError, match="--time"):
        slurm.minutes(limit)


def test_sbatch_options_become_submitit_parameters():
    got = slurm.sbatch_parameters(["constraint=a100", "--exclusive", "mem-per-gpu=40G"])
    assert got == {"constraint": "a100", "exclusive": True, "mem_per_gpu": "40G"}
    with pytest.raises(UserInputError, match="--sbatch =x"):
        slurm.sbatch_parameters(["=x"])


def test_the_job_runs_the_command_without_the_slurm_options():
    argv = ["pretrain", "--out", "r", "--launcher", "slurm", "--nodes=2", "--gpus", "8"]
    argv += ["--sbatch", "exclusive", "--sbatch=constraint=x", "--time", "1:00:00", "-q"]
    assert slurm.job_argv(argv) == ["pretrain", "--out", "r", "--gpus", "8", "-q"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "2"], "--nodes: only with --launcher slurm"),
        (["--launcher", "pbs"], "--launcher must be one of local, slurm, got pbs"),
        (["--launcher", "slurm"], "--launcher slurm needs --time"),
        ([*SLURM, "--restart"], "--restart with --launcher slurm would start over"),
        ([*SLURM, "--nodes", "0"], "--nodes must be 1 or more, got 0"),
        ([*SLURM, "--time", "soon"], "--time soon: give minutes"),
        ([*SLURM, "--gpus", "2", "--cpu-processes", "2"], "not both"),
    ],
)
def test_slurm_mistakes_are_one_line_before_anything_is_queued(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    line = one_error_line(*run_main(["pretrain", "--out", str(out), *args], capsys)[::2])
    assert message in line
    assert not (out / "slurm").exists()


def test_without_submitit_the_extra_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)  # import fails
    line = one_error_line(*run_main(["pretrain", "--out", str(tmp_path), *SLURM], capsys)[::2])
    assert "--launcher slurm needs submitit: pip install 'cpc-fast[slurm]'" in line


# --------------------------------------------------------------------------- the jobs


def _wait(ready, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)


def _submitted(capsys, args: list[str]) -> str:
    """Submits ``args`` through the real entry point; the job id it prints."""
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    return re.search(r"SLURM job (?:array )?(\w+)", out).group(1)


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def cpu_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_submitit_local_executor_runs_the_job_preempts_and_requeues_it(
    tmp_path, capsys, monkeypatch, cpu_env, two_process_runs
):
    """The job's task alone gets SIGUSR2 (as from ``job._interrupt()``): it passes it on to
    its two workers, which save the same step and exit; submitit requeues the job (the
    local executor's status 144) and the job resumes to the uninterrupted run's weights."""
    need("submitit")
    monkeypatch.setattr(slurm, "CLUSTER", "local")
    out = tmp_path / "run"
    args = ["pretrain", *FLAGS, "--max-steps", str(E2E_STEPS), "--cpu-processes", "2"]
    controller = int(_submitted(capsys, [*args, "--out", str(out), *SLURM]))
    try:
        _wait((out / "state.pt").exists, "a checkpoint")
        task = _children(controller)
        assert len(task) == 1  # the job's one task: the submitit process running PretrainJob
        os.kill(task[0], signal.SIGUSR2)
        _wait(lambda: not _alive(controller), "the job's end")
    finally:
        if _alive(controller):
            os.kill(controller, signal.SIGKILL)
    err, log = ((out / "slurm" / f"{controller}_0_log.{x}").read_text() for x in ("err", "out"))
    saved = int(re.search(r"preempted \(SIGUSR2\): step (\d+) is saved", err).group(1))
    assert "Requeued job" in log and f"resuming at step {saved}:" in log
    assert load_state(out / "state.pt")["step"] == E2E_STEPS
    assert differing_weights(out, two_process_runs[0] / "e2e") == []


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch, cpu_env):
    need("submitit")
    import fake_slurm

    state = tmp_path / "fake-slurm"
    for name, value in fake_slurm.install(tmp_path / "bin", state).items():
        monkeypatch.setenv(name, value)
    yield fake_slurm, state
    for record in state.glob("job.*.json"):  # nothing left running, whatever happened
        tasks = json.loads(record.read_text()).get("tasks", [])
        fake_slurm._signal_all(fake_slurm._descendants(tasks), signal.SIGKILL)


def test_what_sbatch_refuses_is_one_line(tmp_path, capsys, fake_slurm):
    args = ["pretrain", "--out", str(tmp_path / "run"), *SLURM, "--partition", "nope"]
    line = one_error_line(*run_main(args, capsys)[::2])
    assert line == "error: sbatch refused the job: sbatch: error: invalid partition specified: nope"


def test_without_srun_here_the_machine_is_named(tmp_path, capsys, monkeypatch):
    need("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    line = one_error_line(*run_main(["pretrain", "--out", str(tmp_path), *SLURM], capsys)[::2])
    assert "Could not detect" in line and "submit from a machine where sbatch and srun run" in line


def _finished(job: str) -> bool:
    queue = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
    return queue.stdout.strip() == ""


def test_a_two_node_pretraining_job_is_preempted_requeued_and_resumed(
    tmp_path, capsys, fake_slurm, two_process_runs
):
    fake, state = fake_slurm
    out = tmp_path / "run"
    args = ["pretrain", *FLAGS, "--max-steps", str(E2E_STEPS), "--gpus", "1", "--out", str(out)]
    args += [*SLURM, "--nodes", "2", "--partition", "debug", "--account", "acct", "--qos", "hi"]
    job = _submitted(capsys, [*args, "--sbatch", "constraint=cpu", "--signal-delay", "60"])
    (submission,) = fake.submissions(state)
    options = submission["options"]
    assert {k: options.get(k) for k in ("nodes", "ntasks-per-node", "gpus-per-node")} == {
        "nodes": "2",
        "ntasks-per-node": "1",
        "gpus-per-node": "1",
    }
    assert options["signal"] == "USR2@60" and options["requeue"] is True
    assert (options["time"], options["partition"], options["account"]) == ("10", "debug", "acct")
    assert (options["qos"], options["constraint"]) == ("hi", "cpu")
    assert "srun" in submission["script"] and "--launcher" not in submission["script"]

    _wait((out / "state.pt").exists, "a checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _wait(lambda: _finished(job), "the job's end")
    assert fake.requeues(state) == [job]
    log = (out / "slurm" / f"{job}_0_log.err").read_text()
    saved = int(re.search(r"preempted \(SIGUSR2\): step (\d+) is saved", log).group(1))
    assert f"resuming at step {saved}:" in (out / "slurm" / f"{job}_0_log.out").read_text()
    assert json.loads((out / "config.json").read_text())["world_size"] == 2  # 2 nodes x 1
    assert load_state(out / "state.pt")["step"] == E2E_STEPS
    assert differing_weights(out, two_process_runs[0] / "e2e") == []


EXPERIMENT = ["experiment", "--dataset", "synthetic", "--preset", "tiny", "--setups", "sup"]
EXPERIMENT += ["--folds", "1", "--runs", "3", "--epochs", "8", "--cpu-processes", "1", "--quiet"]
UNITS = [f"sup.fold1.run{r}" for r in (1, 2, 3)]


def test_an_experiment_job_array_shares_the_folder_and_a_preempted_worker_frees_its_unit(
    tmp_path, capsys, fake_slurm
):
    """Two array workers on one folder; the one training a unit gets SLURM's signal: it
    keeps the unit's last epoch, releases its claim at once (no takeover, no wait) and is
    requeued; every unit is trained to the end once, and the tables are written."""
    fake, state = fake_slurm
    out = tmp_path / "exp"
    job = _submitted(capsys, [*EXPERIMENT, "--out", str(out), *SLURM, "--nodes", "2"])
    options = fake.submissions(state)[0]["options"]
    assert options["array"] == "0-1%2" and options["nodes"] == "1"
    assert "gpus-per-node" not in options and options["signal"].startswith("USR2@")

    def holder() -> tuple[str, int] | None:
        """(a unit being trained with a checkpoint, the pid of its worker)."""
        for unit in UNITS:
            claim = out / ".claims" / f"{unit}.claim"
            if (out / unit.replace(".", "/") / "state.pt").exists() and claim.exists():
                try:
                    return unit, json.loads(claim.read_text())["pid"]
                except (OSError, ValueError):
                    pass  # being written
        return None

    _wait(lambda: holder() is not None, "a unit with a checkpoint")
    unit, pid = holder()
    tasks = {
        index: fake._descendants(json.loads(path.read_text()).get("tasks", []))
        for index, path in ((i, state / f"job.{job}_{i}.json") for i in (0, 1))
    }
    (index,) = [i for i, pids in tasks.items() if pid in pids]
    subprocess.run(["scancel", "--signal=USR2", f"{job}_{index}"], check=True)
    _wait(lambda: all(_finished(f"{job}_{i}") for i in (0, 1)), "the array's end", 300)
    assert fake.requeues(state) == [f"{job}_{index}"]
    events = [line.split()[1:3] for line in (out / ".claims/events.log").read_text().splitlines()]
    assert ["preempted", unit] in events
    assert not any(what.startswith("takeover") for what, _ in events)  # released, not taken
    for name in UNITS:
        assert events.count(["done", name]) == 1, events
    assert events.count(["start", unit]) == 2
    assert (out / "results.json").is_file() and not list((out / ".claims").glob("*.claim"))
