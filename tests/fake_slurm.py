"""A fake SLURM on this machine for the ``--launcher slurm`` tests: ``sbatch``, ``srun``,
``squeue``, ``scontrol requeue`` and ``scancel --signal`` as executables on the PATH
(:func:`install`), which record what they were given and run the jobs here.

* ``sbatch SCRIPT`` refuses the partition ``nope``; otherwise it records the script and its
  ``#SBATCH`` options in
  ``<state>/submissions.jsonl``, prints ``Submitted batch job N`` and returns; a detached
  runner (:func:`_run_job`) runs the script, once per array task (``--array``), in the
  background, with the variables SLURM sets (``SLURM_JOB_ID``, ``SLURM_JOB_NUM_NODES``,
  ``SLURM_ARRAY_*``, ``SLURM_RESTART_COUNT``, ...).
* ``srun CMD`` runs one task per node (``SLURM_PROCID``/``SLURM_NODEID``), every "node"
  being this machine (``SLURM_JOB_NODELIST=localhost``), its output where ``--output`` and
  ``--error`` say.
* ``scancel --signal=SIG ID`` sends SIG to every process of the job's tasks, whatever
  session they are in (as SLURM's cgroups do), not to the batch shell or srun.
* ``scontrol requeue ID`` records the requeue; the runner then ends the job (SIGTERM to
  every process, SIGKILL 10 s later) and runs it again, ``SLURM_RESTART_COUNT`` + 1.
* ``squeue -h -j ID`` prints the job's state while it is pending or running, nothing after.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = "FAKE_SLURM_STATE"
TOOLS = ("sbatch", "srun", "squeue", "scontrol", "scancel")


def install(bin_dir: Path, state: Path) -> dict[str, str]:
    """Writes the fake tools into ``bin_dir``; returns the environment that puts them first
    on the PATH (and tells them where their state is)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(here)!r})\n"
            f"from fake_slurm import main\nmain({tool!r}, sys.argv[1:])\n"
        )
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STATE: str(state)}


def submissions(state: Path) -> list[dict]:
    """What ``sbatch`` received, in order: {"job_id", "script", "options"}."""
    path = state / "submissions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def requeues(state: Path) -> list[str]:
    path = state / "requeues.log"
    return path.read_text().split() if path.exists() else []


def main(tool: str, args: list[str]) -> None:
    state = Path(os.environ[STATE])
    {"sbatch": _sbatch, "srun": _srun, "squeue": _squeue, "scontrol": _scontrol}.get(
        tool, _scancel
    )(state, args)


@contextlib.contextmanager
def _locked(state: Path):
    with open(state / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _options(script: str) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for line in script.splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip())
        if match:
            value = match.group(2)
            options[match.group(1)] = True if value is None else shlex.split(value)[0]
    return options


def _sbatch(state: Path, args: list[str]) -> None:
    script_path = Path(args[-1])
    script = script_path.read_text()
    if _options(script).get("partition") == "nope":
        sys.exit("sbatch: error: invalid partition specified: nope")
    with _locked(state):
        counter = state / "next_id"
        job_id = int(counter.read_text()) if counter.exists() else 1000
        counter.write_text(str(job_id + 1))
        with open(state / "submissions.jsonl", "a") as fh:
            record = {"job_id": str(job_id), "script": script, "options": _options(script)}
            fh.write(json.dumps(record) + "\n")
    copy = state / f"job{job_id}.sh"
    copy.write_text(script)
    subprocess.Popen(
        [sys.executable, __file__, "run", str(job_id), str(copy)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(state / f"runner{job_id}.log", "w"),  # noqa: SIM115 (the runner's)
        cwd=os.getcwd(),
    )
    print(f"Submitted batch job {job_id}")


def _descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them (any session), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _run_job(job_id: str, script: Path) -> None:
    """The background runner of one submission: every array task, requeued when asked."""
    state = Path(os.environ[STATE])
    options = _options(script.read_text())
    array = options.get("array")
    if not array:
        _run_task(state, script, options, job_id, job_id, None)
        return
    first, last = map(int, str(array).split("%")[0].split("-"))
    runners = [
        subprocess.Popen([sys.executable, __file__, "task", job_id, str(script), str(index)])
        for index in range(first, last + 1)
    ]
    for runner in runners:
        runner.wait()


def _run_task(
    state: Path, script: Path, options: dict, name: str, job_id: str, index: int | None
) -> None:
    nodes = int(options.get("nodes", 1))
    restarts = 0
    while True:
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(job_id if index is None else f"{job_id}{index:03d}"),
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NTASKS_PER_NODE": str(options.get("ntasks-per-node", 1)),
            "SLURM_RESTART_COUNT": str(restarts),
        }
        if index is not None:
            env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=str(index))
        _write(state, name, {"state": "RUNNING"})  # before srun adds its tasks
        shell = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True)
        requeued = False
        while shell.poll() is None:
            if (state / f"requeue.{name}").exists():
                requeued = True
                _end(shell)
                break
            time.sleep(0.1)
        requeued = requeued or (state / f"requeue.{name}").exists()
        if not requeued:
            _write(state, name, {"state": "COMPLETED", "code": shell.returncode})
            return
        (state / f"requeue.{name}").unlink()
        restarts += 1


def _end(shell: subprocess.Popen) -> None:
    """A requeued job ends as SLURM ends it: SIGTERM to all, SIGKILL to what is left."""
    time.sleep(1.0)  # scontrol returned to the job's task, which exits on its own
    _signal_all(_descendants([shell.pid]), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while shell.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(_descendants([shell.pid]), signal.SIGKILL)
    shell.wait()


def _write(state: Path, name: str, record: dict) -> None:
    path = state / f"job.{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _read(state: Path, name: str) -> dict:
    path = state / f"job.{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"state": "PENDING"}


def _srun(state: Path, args: list[str]) -> None:
    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # SLURM signals the tasks, not srun
    output = error = None
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            value = args.pop(0)
            output, error = (value, error) if flag == "--output" else (output, value)
    nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    index = os.environ.get("SLURM_ARRAY_TASK_ID", "")

    def path(pattern: str, task: int) -> str:
        for key, value in (("%A", job), ("%a", index), ("%j", os.environ["SLURM_JOB_ID"])):
            pattern = pattern.replace(key, value)
        return pattern.replace("%t", str(task))

    tasks = []
    for rank in range(nodes * per_node):
        env = {
            **os.environ,
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank % per_node),
            "SLURM_NODEID": str(rank // per_node),
            "SLURM_NTASKS": str(nodes * per_node),
        }
        out = open(path(output, rank), "a") if output else None  # noqa: SIM115
        err = open(path(error, rank), "a") if error else None  # noqa: SIM115
        tasks.append(subprocess.Popen(args, env=env, stdout=out, stderr=err))
    name = f"{job}_{index}" if index else job
    with _locked(state):
        record = _read(state, name)
        _write(state, name, {**record, "tasks": [t.pid for t in tasks]})
    sys.exit(max(t.wait() for t in tasks))


def _squeue(state: Path, args: list[str]) -> None:
    job = args[args.index("-j") + 1]
    found = [*state.glob(f"job.{job}.json"), *state.glob(f"job.{job}_*.json")]
    names = [job] if "_" in job else [p.name[4:-5] for p in found]
    for name in names or [job]:
        record = _read(state, name)
        if record["state"] != "COMPLETED":
            print(f"{name} {record['state']}")


def _scontrol(state: Path, args: list[str]) -> None:
    if args[:1] != ["requeue"]:
        sys.exit(f"fake scontrol: only `requeue` ({args})")
    with open(state / "requeues.log", "a") as fh:
        fh.write(args[1] + "\n")
    (state / f"requeue.{args[1]}").touch()


def _scancel(state: Path, args: list[str]) -> None:
    """``scancel --signal=SIG ID``: SIG to every process of the job's tasks."""
    signame = next(a.split("=", 1)[1] for a in args if a.startswith("--signal="))
    signum = signal.Signals[signame if signame.startswith("SIG") else f"SIG{signame}"]
    record = _read(state, args[-1])
    _signal_all(_descendants(record.get("tasks", [])), signum)


if __name__ == "__main__":  # the runner: `fake_slurm.py run JOB SCRIPT` or `task JOB SCRIPT I`
    what, job_id, script = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if what == "run":
        _run_job(job_id, script)
    else:
        index = int(sys.argv[4])
        state = Path(os.environ[STATE])
        _run_task(state, script, _options(script.read_text()), f"{job_id}_{index}", job_id, index)
