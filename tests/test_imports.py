"""`import secagg` and `import dp` must work without torch, opacus or flwr installed."""

from __future__ import annotations

import subprocess
import sys

_BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'opacus', 'flwr', 'matplotlib', 'scipy', 'dp_accounting'}:
            raise ModuleNotFoundError(f'blocked {name}')
        return None
sys.meta_path.insert(0, _Block())
import secagg, dp
import secagg.cli
assert 'torch' not in sys.modules and 'flwr' not in sys.modules
print('ok')
"""


def test_core_imports_without_optional_extras() -> None:
    out = subprocess.run([sys.executable, "-c", _BLOCKER], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "secagg.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("round", "demo", "privacy", "verify", "report", "bench"):
        assert name in out.stdout
