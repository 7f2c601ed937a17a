"""bqq.ptq.runner: groups solved one at a time, side by side on threads, in processes or on Dask give the same
model; the cache resumes, even after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numba
import pytest
import torch

import bqq
from bqq.ptq import quantized_layers
from bqq.ptq import runner as ptq_runner
from tests.helpers import FAST, ROOT, model_outputs, tiny


@pytest.mark.parametrize("workers", [1, None], ids=["one-at-a-time", "threads"])
def test_cache_resumes_without_redoing_finished_groups(tmp_path, images, monkeypatch, workers):
    reference_model = bqq.quantize(tiny(), bits=2, method="bqq", **FAST)
    reference = model_outputs(reference_model, images)
    total = sum(len(m.qweight.grid) for _, m in quantized_layers(reference_model))
    # One group per call with workers=1; threads solve bundles of groups (each as it would be alone).
    name, groups_in = ("solve_group", lambda job: [job]) if workers == 1 else ("solve_bundle", list)
    real = getattr(ptq_runner, name)
    calls = []
    lock = threading.Lock()

    def interrupted_after_five(unit):
        with lock:
            if len(calls) >= 5:
                raise KeyboardInterrupt
            calls.extend(groups_in(unit))
        return real(unit)

    monkeypatch.setattr(ptq_runner, name, interrupted_after_five)
    with pytest.raises(KeyboardInterrupt):
        bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, workers=workers, **FAST)
    cached = len(list(tmp_path.glob("*.safetensors")))
    # Bundles already running on other threads when the interrupt came may finish and be cached too.
    assert cached == 5 if workers == 1 else cached < total
    counted = []
    monkeypatch.setattr(ptq_runner, name, lambda unit: counted.extend(groups_in(unit)) or real(unit))
    resumed = bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, workers=workers, **FAST)
    assert len(counted) == total - cached
    assert torch.equal(model_outputs(resumed, images), reference)
    counted.clear()
    bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, workers=workers, **FAST)
    assert counted == []  # everything cached
    counted.clear()
    bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, seed=1, workers=workers, **FAST)
    assert len(counted) == total  # another seed is other work


def test_groups_side_by_side_on_threads_give_the_same_model(images, monkeypatch):
    """Threads solve bundles of same-shape groups in one call; each group's codes equal its codes alone
    (workers=1), also with a polish that stops on a tolerance (each group on its own flip count)."""
    bundles = []
    real = ptq_runner.solve_bundle
    monkeypatch.setattr(ptq_runner, "solve_bundle",
                        lambda bundle: bundles.append((threading.current_thread().name, len(bundle))) or real(bundle))
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    settings = {"bits": 2, "method": "bqq", "group_size": 16, "polish_tolerance": 0.02, **FAST}
    try:
        side_by_side = bqq.quantize(tiny(), **settings)
    finally:
        numba.set_num_threads(before)
    assert all(name.startswith("bqq-group") for name, _ in bundles) and len(bundles) > 1
    assert max(size for _, size in bundles) == ptq_runner.THREAD_BUNDLE
    one_at_a_time = bqq.quantize(tiny(), workers=1, **settings)
    assert torch.equal(model_outputs(side_by_side, images), model_outputs(one_at_a_time, images))


def test_cache_survives_kill_9(tmp_path, images):
    # 8x8 groups: ~150 small groups, so the kill lands mid-run with several groups done.
    settings = {"bits": 4, "group_size": 8, "sweeps": 300}
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        import bqq
        from tests.helpers import tiny
        bqq.quantize(tiny(), cache_dir={str(tmp_path)!r}, progress=False, **{settings!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 300
    while len(list(tmp_path.glob("*.safetensors"))) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(tmp_path.glob("*.safetensors")))
    resumed = bqq.quantize(tiny(), cache_dir=tmp_path, **settings)
    total = sum(len(m.qweight.grid) for _, m in quantized_layers(resumed))
    assert 5 <= done < total, (done, total)
    fresh = bqq.quantize(tiny(), **settings)
    assert torch.equal(model_outputs(resumed, images), model_outputs(fresh, images))


def test_process_workers_give_identical_results(images):
    sequential = model_outputs(bqq.quantize(tiny(), bits=2, **FAST), images)
    parallel = model_outputs(bqq.quantize(tiny(), bits=2, workers=2, **FAST), images)
    assert torch.equal(parallel, sequential)


def test_dask_executor_on_loopback(images):
    distributed = pytest.importorskip("distributed")
    sequential = model_outputs(bqq.quantize(tiny(), bits=2, **FAST), images)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        q = bqq.quantize(tiny(), bits=2, workers=client.get_executor(), **FAST)
    assert torch.equal(model_outputs(q, images), sequential)
