"""A source checkout imports without `pip install` (`PYTHONPATH=. python -c "import bqq"`): the `kernels/`
folder is found under its installed name `bqq_kernels`, as on a GPU machine that runs the tree as copied; a
foreign top-level `kernels` package does not matter."""

from __future__ import annotations

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


# --- the kernels package is bqq_kernels --------------------------------------------------------------

def test_a_foreign_top_level_kernels_package_does_not_matter(tmp_path):
    """The PyPI distribution `kernels` is often installed beside transformers; ours is `bqq_kernels`."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this is the foreign kernels package')\n")
    script = textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        import bqq
        model = nn.Sequential(nn.Linear(16, 8))
        bqq.quantize(model, bits=1, method="bqq", sweeps=20, progress=False)
        assert model[0].uses_kernel()
        out = model(torch.randn(3, 16))
        assert out.shape == (3, 8) and "kernels" not in sys.modules
        print("ok")
    """)
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
