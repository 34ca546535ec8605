"""Injectable randomness: re-exported from :mod:`dp.rand` (see there for the ``rng`` rules).

``rng`` arguments throughout :mod:`secagg` accept ``None`` (a fresh AES-256-CTR CSPRNG keyed
from ``os.urandom``), a ``bytes``/``int`` seed (deterministic, for known-answer tests
only), a :class:`RandomSource`, or a :class:`numpy.random.Generator` (statistics only).

Layering: :mod:`dp` is the lower layer and must not import :mod:`secagg`, so the one
implementation lives in :mod:`dp.rand`.  :class:`RandomSource` and :data:`RngLike` here are
the very same objects; :func:`as_random_source` is :func:`dp.rand.as_random_source` wrapped
by :func:`secagg.ring.secagg_errors`, so a bad ``rng`` passed to :mod:`secagg` raises
:class:`~secagg.errors.SecAggTypeError` / :class:`~secagg.errors.SecAggValueError`.
Methods called directly on a :class:`RandomSource` raise :mod:`dp.errors` types (still
``TypeError`` / ``ValueError`` subclasses).
"""

from __future__ import annotations

from dp import rand as _rand
from dp.rand import RandomSource, RngLike
from secagg.ring import secagg_errors

__all__ = ["RandomSource", "RngLike", "as_random_source"]

as_random_source = secagg_errors(_rand.as_random_source)
