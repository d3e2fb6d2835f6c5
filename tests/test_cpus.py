"""available_cpus: the affinity mask, capped by a cgroup v2 or v1 CPU quota."""

from __future__ import annotations

import os

import pytest

from cpc_fast.io import cpus


@pytest.fixture
def fake_cgroups(tmp_path, monkeypatch):
    """A cgroup tree under tmp_path, with this process in /a/b (cgroup v2)."""
    root = tmp_path / "cgroup"
    (root / "a" / "b").mkdir(parents=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/a/b\n")
    monkeypatch.setattr(cpus, "_CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "_PROC_CGROUP", proc)
    monkeypatch.setattr(cpus, "_affinity_cpus", lambda: 8)
    return root


def test_no_limit_is_the_affinity(fake_cgroups):
    assert cpus.available_cpus() == 8


def test_affinity_is_the_real_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert cpus._affinity_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", 8), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1)],
)
def test_cgroup_v2_quota(fake_cgroups, cpu_max, expected):
    (fake_cgroups / "a" / "b" / "cpu.max").write_text(cpu_max + "\n")
    assert cpus.available_cpus() == expected


def test_a_parent_cgroup_limit_binds(fake_cgroups):
    (fake_cgroups / "a" / "b" / "cpu.max").write_text("max 100000\n")
    (fake_cgroups / "a" / "cpu.max").write_text("300000 100000\n")
    assert cpus.available_cpus() == 3


def test_quota_above_the_affinity_keeps_the_affinity(fake_cgroups):
    (fake_cgroups / "a" / "b" / "cpu.max").write_text("1600000 100000\n")
    assert cpus.available_cpus() == 8


def test_cgroup_v1_quota(fake_cgroups, monkeypatch, tmp_path):
    monkeypatch.setattr(cpus, "_PROC_CGROUP", tmp_path / "missing")
    v1 = fake_cgroups / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.available_cpus() == 4
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert cpus.available_cpus() == 8


def test_share_of_cores_respects_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpus.share_of_cores(1, cores=8) == 8
    assert cpus.share_of_cores(3, cores=8) == 2
    assert cpus.share_of_cores(16, cores=8) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpus.share_of_cores(1, cores=8) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert cpus.share_of_cores(2, cores=8) == 4


def test_intra_op_threads_sets_and_restores():
    import torch

    before = torch.get_num_threads()
    with cpus.intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpus.intra_op_threads(0):  # 0: left as it is
        assert torch.get_num_threads() == before
