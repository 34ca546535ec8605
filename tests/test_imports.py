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


def test_dp_loads_no_secagg_module() -> None:
    """Layers point one way: dp is the lower layer and never imports secagg."""
    code = "import dp, sys; bad = [m for m in sys.modules if m.startswith('secagg')]; assert not bad, bad"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_secagg_reexports_the_dp_randomness_and_ring_core() -> None:
    """One implementation: secagg.rand / secagg.ring hand out dp's objects, with secagg errors."""
    import pytest

    import dp._ring
    import dp.rand
    import secagg.encoding
    import secagg.rand
    import secagg.ring
    from dp.errors import DPTypeError, DPValueError
    from secagg.errors import SecAggTypeError, SecAggValueError

    assert secagg.rand.RandomSource is dp.rand.RandomSource
    assert secagg.rand.RngLike is dp.rand.RngLike
    assert secagg.ring.MAX_BITS == dp._ring.MAX_BITS
    assert secagg.rand.as_random_source.__wrapped__ is dp.rand.as_random_source  # type: ignore[attr-defined]
    assert secagg.ring.check_bits.__wrapped__ is dp._ring.check_bits  # type: ignore[attr-defined]
    assert secagg.encoding.centered_lift.__wrapped__ is dp._ring.centered_lift  # type: ignore[attr-defined]
    with pytest.raises(SecAggValueError, match="bits must be in"):
        secagg.ring.check_bits(0)
    with pytest.raises(SecAggTypeError):
        secagg.ring.ring_dtype(True)
    with pytest.raises(SecAggTypeError):
        secagg.rand.as_random_source(1.5)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        dp._ring.check_bits(65)
    with pytest.raises(DPTypeError):
        dp.rand.as_random_source(True)
    with pytest.raises(DPValueError):
        dp.rand.RandomSource(0).integers(10**400, 3)
    with pytest.raises(DPTypeError):
        dp.rand.RandomSource(0).bytes(2.0)  # type: ignore[arg-type]
