"""Every drop-in imports with none of the toolkits it stands in for (nor their dependencies)."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ["speechbrain", "nemo", "fairseq", "cpc", "torchaudio", "transformers", "hydra"]
MODULES = {
    "speechbrain": "ContrastiveLoss",
    "nemo": "ContrastiveLoss",
    "fairseq": "contrastive_loss",
    "cpc_audio": "CPCUnsupersivedCriterion",
}


def test_the_drop_ins_import_without_their_toolkits():
    # A None entry makes `import name` raise ImportError: any import of a toolkit fails.
    code = "import sys\n"
    code += "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    for module, name in MODULES.items():
        code += f"from cpc_fast.integrations.{module} import {name}; print({name}.__name__)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:4] == [
        "ContrastiveLoss",
        "ContrastiveLoss",
        "contrastive_loss",
        "CPCUnsupervisedCriterion",
    ]
