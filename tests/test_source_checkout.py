"""A source checkout imports without `pip install` (`PYTHONPATH=. python -c "import bqq"`): the `kernels/`
folder is found under its installed name `bqq_kernels`, as on a GPU machine that runs the tree as copied."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkout_that_was_never_installed_imports(tmp_path):
    for name in ("bqq", "kernels"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    # Hide this environment's own install of bqq (an editable finder or a site-packages copy).
    script = textwrap.dedent(f"""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
        sys.path[:] = [{str(tmp_path)!r}] + [p for p in sys.path if p and "__editable__" not in p]
        import numpy as np, torch
        import bqq, bqq_kernels
        assert bqq.__file__.startswith({str(tmp_path)!r}), bqq.__file__
        assert bqq_kernels.__file__.startswith({str(tmp_path / 'kernels')!r}), bqq_kernels.__file__
        q = bqq.compress(np.random.default_rng(0).standard_normal((16, 24)), bits=2, method="uq")
        x = torch.randn(3, 24)
        ref = x @ q.dequantize(torch.float32).T
        assert torch.allclose(bqq_kernels.bqq_linear(x, q.kernel_layout(), backend="numba-exact"), ref, atol=1e-5)
        assert torch.allclose(bqq_kernels.bqq_linear(x, q.kernel_layout()), ref, atol=1e-3)  # 16-bit tables
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
