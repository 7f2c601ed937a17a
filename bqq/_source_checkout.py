"""Importing bqq from a source checkout that was never pip-installed (``PYTHONPATH=. python ...``).

The top-level ``kernels/`` folder is installed as the package ``bqq_kernels`` (pyproject's
``package-dir``: the name ``kernels`` belongs to another PyPI project). Without an install that name
does not exist, so when it cannot be found and the checkout's ``kernels/`` sits beside this package,
that folder is imported once under the name ``bqq_kernels``; its submodules then import by that name
too. An installed (or editable) ``bqq_kernels`` is always preferred.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def alias_kernels() -> None:
    """Make ``import bqq_kernels`` work in a source checkout (no effect when it already does)."""
    if "bqq_kernels" in sys.modules or importlib.util.find_spec("bqq_kernels") is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "kernels"
    if not (folder / "__init__.py").is_file():
        return  # not a checkout: the import that follows reports the missing package
    spec = importlib.util.spec_from_file_location("bqq_kernels", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bqq_kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["bqq_kernels"]
        raise


alias_kernels()
