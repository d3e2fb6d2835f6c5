"""Optional packages in tests: a test that needs one skips where it is not installed, and
fails in CI.

CI (``.ci/run``) installs every extra the tests use and sets ``CPC_FAST_REQUIRE_EXTRAS=1``.
There an extra that cannot be imported is a broken install, not a reason to skip: a skip
would let the parity tests against Hugging Face vanish while CI stays green. Anywhere, a
package that is installed but fails to import (an ``ImportError`` other than "no module
named <it>") is an error, never a skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_EXTRAS = os.environ.get("CPC_FAST_REQUIRE_EXTRAS", "0") not in ("", "0")


def need(module: str) -> ModuleType:
    """Imports ``module`` for a test: skips the test where the package is not installed,
    fails it where ``CPC_FAST_REQUIRE_EXTRAS=1`` asks for every extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.partition(".")[0]:
            raise  # installed, but something it imports is missing: a broken install
        if REQUIRE_EXTRAS:
            pytest.fail(
                f"{module} is not installed, and CPC_FAST_REQUIRE_EXTRAS=1 requires every "
                "extra (pip install -e '.[dev,viz,compat,tb]')",
                pytrace=False,
            )
        pytest.skip(f"needs {module} (an optional extra)")
