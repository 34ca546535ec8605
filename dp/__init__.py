"""dp: differential-privacy mechanisms, distributed DP, accounting and the privacy ledger.

Public names are re-exported here, one way to do each thing: accountants are built with
:func:`make_accountant` (the concrete classes stay in :mod:`dp.accountants`), randomness
comes from :mod:`dp.rand` (``rng`` arguments), submodules hold the details.  Importing :mod:`dp`
never imports torch, opacus, dp_accounting, scipy or matplotlib (optional backends
load lazily).
"""

from dp.accountants import (
    ACCOUNTANT_NAMES,
    Accountant,
    available_accountants,
    make_accountant,
)
from dp.calibration import calibrate_noise_multiplier
from dp.clipping import AdaptiveClipper, clip_l2, l2_norm
from dp.distributed import DistributedPlan, NoiseReport, plan_distributed
from dp.errors import (
    AccountingError,
    BudgetExceededError,
    DPError,
    DPTypeError,
    DPValueError,
    LedgerError,
    LedgerVerificationError,
)
from dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    FixedSizeSampledEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    SkellamEvent,
    event_from_dict,
)
from dp.ledger import Ledger, LedgerHead, VerificationResult, read_ledger, verify_ledger
from dp.mechanisms import DiscreteGaussian, DiscreteLaplace, Gaussian, Laplace, Skellam
from dp.report import write_report
from dp.rotation import HadamardRotation
from dp.tracker import PrivacyTracker, RoundEpsilon, RoundPrivacy, calibrate_for_server

__all__ = [
    "ACCOUNTANT_NAMES",
    "Accountant",
    "AccountingError",
    "AdaptiveClipper",
    "BudgetExceededError",
    "ComposedEvent",
    "DPError",
    "DPTypeError",
    "DPValueError",
    "DiscreteGaussian",
    "DiscreteLaplace",
    "DistributedDiscreteGaussianEvent",
    "DistributedPlan",
    "FixedSizeSampledEvent",
    "Gaussian",
    "GaussianEvent",
    "HadamardRotation",
    "Laplace",
    "LaplaceEvent",
    "Ledger",
    "LedgerError",
    "LedgerHead",
    "LedgerVerificationError",
    "NoiseReport",
    "PoissonSampledEvent",
    "PrivacyEvent",
    "PrivacyTracker",
    "RoundEpsilon",
    "RoundPrivacy",
    "SelfComposedEvent",
    "Skellam",
    "SkellamEvent",
    "VerificationResult",
    "available_accountants",
    "calibrate_for_server",
    "calibrate_noise_multiplier",
    "clip_l2",
    "event_from_dict",
    "l2_norm",
    "make_accountant",
    "plan_distributed",
    "read_ledger",
    "verify_ledger",
    "write_report",
]
