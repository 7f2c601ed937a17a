"""The thread budget (bqq.threads): passive waiting by default, cores split between worker processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import pytest
import torch
from threadpoolctl import threadpool_info

from bqq import threads


def test_passive_waiting_is_preferred_unless_disabled_or_chosen():
    env: dict[str, str] = {}
    assert threads.prefer_passive_waiting(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}, {"KMP_BLOCKTIME": "0"}):
        env = dict(chosen)
        assert not threads.prefer_passive_waiting(env) and env == chosen  # the user's choice stands
    for off in ("off", "0", "False", " no "):
        env = {threads.POLICY_ENV: off}
        assert not threads.policy_enabled(env) and not threads.prefer_passive_waiting(env)
        assert "OMP_WAIT_POLICY" not in env
    assert threads.policy_enabled({}) and threads.policy_enabled({threads.POLICY_ENV: "on"})


def test_importing_bqq_sets_the_wait_policy_before_numba_starts_threads():
    code = "import os, bqq; print(os.environ.get('OMP_WAIT_POLICY'))"
    base = {k: v for k, v in os.environ.items() if k not in (*threads.WAIT_SWITCHES, threads.POLICY_ENV)}
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "PASSIVE", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], env=base | {threads.POLICY_ENV: "off"}, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.strip() == "None", out.stderr[-2000:]


def test_threads_per_process_splits_the_cores():
    assert threads.threads_per_process(1, cores=8) == 8
    assert threads.threads_per_process(2, cores=8) == 4
    assert threads.threads_per_process(3, cores=8) == 2
    assert threads.threads_per_process(4, cores=2) == 1  # never below one thread
    with pytest.raises(ValueError):
        threads.threads_per_process(0, cores=2)


def test_available_cores_respects_affinity_and_cgroup_quota(tmp_path):
    assert threads.available_cores({0, 1, 2, 3}, cgroup_root=tmp_path) == 4  # no cpu.max: affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.available_cores({0, 1, 2, 3}, cgroup_root=tmp_path) == 4
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert threads.available_cores({0, 1, 2, 3}, cgroup_root=tmp_path) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert threads.available_cores({0, 1}, cgroup_root=tmp_path) == 1
    assert threads.available_cores() >= 1


def test_apply_budget_sets_numba_torch_and_blas():
    before = (numba.get_num_threads(), torch.get_num_threads(),
              {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})
    try:
        got = threads.apply_budget(1)
        assert got == {"numba": 1, "torch": 1, "blas": 1}
        assert numba.get_num_threads() == 1 and torch.get_num_threads() == 1
        assert all(d["num_threads"] == 1 for d in threadpool_info() if d["user_api"] == "blas")
        with pytest.raises(ValueError):
            threads.apply_budget(0)
    finally:
        numba.set_num_threads(before[0])
        torch.set_num_threads(before[1])
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=max(before[2].values(), default=1), user_api="blas")
