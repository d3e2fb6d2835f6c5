"""``--launcher slurm``: ``pretrain`` and ``experiment`` submit themselves to SLURM through
submitit (the ``slurm`` extra) and return, printing the job ids and where the logs are.

    cpc-fast pretrain --data /data/LibriSpeech --out runs/ls100 --gpus 8 \\
        --launcher slurm --nodes 2 --partition gpu --time 24:00:00
    cpc-fast experiment --dataset iemocap --root ... --gpus 1 --out /shared/exp \\
        --launcher slurm --nodes 16 --time 4:00:00

The job runs the same command line without the SLURM options, from the same folder, with
the same Python. Pre-training is one job of ``--nodes`` nodes, one task per node: the task
launches that node's workers (``--gpus``, or ``--cpu-processes``) into one group through a
c10d rendezvous on the first node, as the README's torchrun line does. The experiment is a
job array of ``--nodes`` workers of one node each, sharing ``--out`` (the claims coordinate
them). SLURM sends submitit's signal (SIGUSR2) ``--signal-delay`` seconds before the time
limit, and at a preemption where the cluster does; the workers save their step (or release
their unit) and the job requeues itself (:mod:`cpc_fast.cli.slurm_jobs`), then resumes.

Why options of the two commands rather than a ``cpc-fast submit`` wrapper: the command's
own parsing checks the whole configuration (presets, flags, the output folder) before
anything is queued, so a mistake is one line now rather than a failed job hours later; the
job's command is this one without the SLURM options, so "run the same command again" stays
the rule; and ``--gpus``/``--cpu-processes`` keep their meaning (per node).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cpc_fast.cli.app import invoked_argv
from cpc_fast.errors import UserInputError, require_extra
from cpc_fast.training.preemption import SIGNALS_VARIABLE, preemption_signals

LAUNCHERS = ("local", "slurm")
# Which submitit executor takes the job: SLURM; tests put "local" here (submitit's local
# executor runs the same job on this machine).
CLUSTER = "slurm"
_PANEL = "SLURM (--launcher slurm)"


@dataclass(frozen=True)
class SlurmOptions:
    """The options of ``--launcher slurm`` (each option's help says what it does)."""

    launcher: str = "local"
    nodes: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    sbatch: tuple[str, ...] = ()
    signal_delay: int = 120
    max_timeouts: int = 10
    slurm_dir: Path | None = None

    @property
    def submits(self) -> bool:
        return self.launcher == "slurm"


_DEFAULTS = SlurmOptions()
# parameter name -> (flag, metavar, type, help): launch options, recorded nowhere
_OPTIONS: dict[str, tuple[str, str, Any, str]] = {
    "launcher": (
        "--launcher",
        "local|slurm",
        str,
        "local: run here (default); slurm: submit a SLURM job through submitit and return.",
    ),
    "nodes": (
        "--nodes",
        "N",
        int,
        "pretrain: nodes of the one job (--gpus or --cpu-processes on each); experiment: "
        "workers of the job array, one node each.",
    ),
    "partition": ("--partition", "NAME", str, "SLURM partition."),
    "account": ("--account", "NAME", str, "SLURM account."),
    "qos": ("--qos", "NAME", str, "SLURM quality of service."),
    "time": (
        "--time",
        "LIMIT",
        str,
        "Time limit of each job: minutes, or [D-]HH:MM:SS (required; the job requeues "
        "itself when it runs out).",
    ),
    "cpus_per_task": (
        "--cpus-per-task",
        "N",
        int,
        "CPU cores per node for the node's task and all its workers (default: SLURM's).",
    ),
    "sbatch": (
        "--sbatch",
        "NAME[=VALUE]",
        list[str],
        "Another sbatch option, NAME=VALUE or NAME (repeat it): --sbatch constraint=a100 "
        "--sbatch exclusive.",
    ),
    "signal_delay": (
        "--signal-delay",
        "SECONDS",
        int,
        "Seconds between SLURM's warning signal and the time limit: time to finish the "
        "step and save.",
    ),
    "max_timeouts": (
        "--max-timeouts",
        "N",
        int,
        "How many times a job that reaches its time limit is requeued (preemptions always are).",
    ),
    "slurm_dir": (
        "--slurm-dir",
        "PATH",
        Path,
        "submitit's folder (job scripts, logs), seen by every node (default: OUT/slurm).",
    ),
}


def slurm_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Gives the decorated command the SLURM options in place of its ``slurm`` parameter,
    which receives them as one :class:`SlurmOptions`."""
    signature = inspect.signature(command, eval_str=True)
    own = list(signature.parameters.values())
    at = [p.name for p in own].index("slurm")
    generated = []
    for name, (flag, metavar, kind, help_text) in _OPTIONS.items():
        default = getattr(_DEFAULTS, name)
        is_list = kind == list[str]
        option = typer.Option(
            flag,
            help=help_text,
            metavar=metavar,
            rich_help_panel=_PANEL,
            show_default=default not in (None, ()),
        )
        annotation = kind if default is not None and not is_list else kind | None
        generated.append(
            inspect.Parameter(
                f"slurm_{name}",
                inspect.Parameter.KEYWORD_ONLY,
                default=None if is_list else default,
                annotation=Annotated[annotation, option],
            )
        )

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(f"slurm_{name}") for name in _OPTIONS}
        values["sbatch"] = tuple(values["sbatch"] or ())
        return command(**kwargs, slurm=SlurmOptions(**values))

    run.__signature__ = signature.replace(
        parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at]]
        + generated
        + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at + 1 :]]
    )
    return run


def check_options(slurm: SlurmOptions, *, restart: bool) -> None:
    """Refuses SLURM options without ``--launcher slurm``, and what a job cannot do."""
    if slurm.launcher not in LAUNCHERS:
        raise UserInputError(
            f"--launcher must be one of {', '.join(LAUNCHERS)}, got {slurm.launcher}"
        )
    if not slurm.submits:
        given = [_OPTIONS[n][0] for n in _OPTIONS if getattr(slurm, n) != getattr(_DEFAULTS, n)]
        if given:
            raise UserInputError(f"{', '.join(given)}: only with --launcher slurm")
        return
    if slurm.time is None:
        raise UserInputError("--launcher slurm needs --time, the job's time limit (e.g. 24:00:00)")
    if restart:
        raise UserInputError(
            "--restart with --launcher slurm would start over at every requeue: delete the "
            "folder's files first (or use a new --out), then submit"
        )
    for name, least in (("nodes", 1), ("cpus_per_task", 1), ("signal_delay", 0)):
        value = getattr(slurm, name)
        if value is not None and value < least:
            raise UserInputError(f"{_OPTIONS[name][0]} must be {least} or more, got {value}")
    if slurm.max_timeouts < 0:
        raise UserInputError(f"--max-timeouts must be 0 or more, got {slurm.max_timeouts}")
    minutes(slurm.time)
    sbatch_parameters(slurm.sbatch)


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def minutes(limit: str) -> int:
    """SLURM's time formats (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in
    whole minutes, rounded up."""
    match = _TIME.match(limit.strip())
    if not match:
        raise UserInputError(
            f"--time {limit}: give minutes, or [D-]HH:MM:SS (e.g. 90, 4:00:00, 1-12:00:00)"
        )
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is None:  # M, M:S or H:M:S
        hours, mins, secs = (a, b, c) if c is not None else (0, a, b or 0)
    else:  # D-H, D-H:M or D-H:M:S
        hours, mins, secs = a, b or 0, c or 0
    seconds = ((days or 0) * 24 + hours) * 3600 + mins * 60 + secs
    if seconds <= 0:
        raise UserInputError(f"--time {limit}: the time limit must be more than 0")
    return math.ceil(seconds / 60)


def sbatch_parameters(options: Sequence[str]) -> dict[str, Any]:
    """``--sbatch`` values as submitit's ``additional_parameters``: NAME=VALUE -> value,
    NAME -> a bare flag; names with dashes or underscores alike (they win over cpc-fast's)."""
    parameters: dict[str, Any] = {}
    for option in options:
        name, has_value, value = option.lstrip("-").partition("=")
        if not re.fullmatch(r"[A-Za-z][\w-]*", name):
            raise UserInputError(
                f"--sbatch {option}: give an sbatch option as NAME=VALUE or NAME "
                "(e.g. constraint=a100, exclusive)"
            )
        parameters[name.replace("-", "_")] = value if has_value else True
    return parameters


def job_argv(argv: Sequence[str]) -> list[str]:
    """The command line without the SLURM options: what the job runs."""
    flags = {flag for flag, _, _, _ in _OPTIONS.values()}
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in flags:
            skip = True  # every SLURM option takes a value
        elif not any(token.startswith(f"{flag}=") for flag in flags):
            kept.append(token)
    return kept


def _submitit():
    """The ``slurm`` extra, or a one-line error naming it (imported only when a job is
    submitted)."""
    return require_extra("submitit", "--launcher slurm", "slurm")


def submit(
    command: str,
    slurm: SlurmOptions,
    *,
    out: Path,
    processes_per_node: int,
    gpus_per_node: int,
) -> None:
    """Submits ``command`` (pretrain or experiment, the invoked command line less the SLURM
    options) and prints the job ids and the logs; returns at once."""
    submitit = _submitit()
    from cpc_fast.cli import slurm_jobs  # needs submitit (imported just above)

    signum = submitit.JobEnvironment._usr_sig()
    if signum not in preemption_signals():
        name = signal.Signals(signum).name
        raise UserInputError(
            f"{SIGNALS_VARIABLE} leaves out {name}, submitit's signal: the job's workers "
            "would die on it instead of saving"
        )
    folder = (slurm.slurm_dir or out / "slurm").absolute()
    timeouts = {f"{name}_max_num_timeout": slurm.max_timeouts for name in ("slurm", "local")}
    try:
        executor = submitit.AutoExecutor(folder, cluster=CLUSTER, **timeouts)
    except RuntimeError as exc:  # submitit's "Could not detect srun"
        raise UserInputError(
            f"--launcher slurm: {exc} (submit from a machine where sbatch and srun run)"
        ) from None
    array = command == "experiment"
    parameters: dict[str, Any] = {
        "name": f"cpc-fast-{command}",
        "timeout_min": minutes(slurm.time),
        "nodes": 1 if array else slurm.nodes,
        "tasks_per_node": 1,  # one launcher per node, which starts the node's workers
        "slurm_signal_delay_s": slurm.signal_delay,
        # Eligible for requeueing: by submitit at the warning signal, by SLURM at a
        # preemption where the partition requeues.
        "slurm_additional_parameters": {"requeue": True, **sbatch_parameters(slurm.sbatch)},
    }
    if gpus_per_node:
        parameters["gpus_per_node"] = gpus_per_node
    if slurm.cpus_per_task:
        parameters["cpus_per_task"] = slurm.cpus_per_task
    for name in ("partition", "account", "qos"):
        if getattr(slurm, name):
            parameters[f"slurm_{name}"] = getattr(slurm, name)
    if array:
        parameters["slurm_array_parallelism"] = slurm.nodes
    executor.update_parameters(**parameters)
    argv = job_argv(invoked_argv())
    wait_s = max(slurm.signal_delay - 15, 10)  # the warning's time, less the requeue's
    common = dict(argv=argv, cwd=os.getcwd(), wait_s=wait_s)
    try:
        if array:
            with executor.batch():
                worker = slurm_jobs.ExperimentJob(**common)
                jobs = [executor.submit(worker) for _ in range(slurm.nodes)]
        else:
            job = slurm_jobs.PretrainJob(**common, processes_per_node=processes_per_node)
            jobs = [executor.submit(job)]
    except submitit.core.utils.FailedJobError as exc:  # sbatch's own message, one line
        why = next((line for line in str(exc).splitlines() if line.strip()), "no reason given")
        raise UserInputError(f"sbatch refused the job: {why}") from None
    _announce(command, jobs, slurm, processes_per_node, gpus_per_node)


def _announce(command, jobs, slurm, processes_per_node: int, gpus_per_node: int) -> None:
    """The job ids, the logs and how to watch them."""
    each = f"{gpus_per_node} GPU(s)" if gpus_per_node else f"{processes_per_node} CPU process(es)"
    first = jobs[0]
    main_id = first.job_id.split("_")[0]
    if command == "experiment" and len(jobs) > 1:
        ids = " ".join(j.job_id for j in jobs)
        what = f"job array {main_id}: {ids} ({len(jobs)} workers of 1 node, {each} each)"
        per = f"worker i: {main_id}_i_0_log.*"
    else:
        nodes = 1 if command == "experiment" else slurm.nodes
        what = f"job {first.job_id} ({nodes} node(s), {each} each)"
        per = f"node i: {main_id}_i_log.*" if nodes > 1 else ""
    typer.echo(f"submitted {command}: SLURM {what}")
    typer.echo(f"logs: {first.paths.stdout}, .err" + (f" ({per})" if per else ""))
    typer.echo(
        f"watch: squeue -j {main_id}; the job requeues itself when preempted or out of time, "
        "and resumes"
    )


__all__ = [
    "CLUSTER",
    "LAUNCHERS",
    "SlurmOptions",
    "check_options",
    "job_argv",
    "minutes",
    "sbatch_parameters",
    "slurm_options",
    "submit",
]
