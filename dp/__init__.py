"""dp: differential-privacy mechanisms, accounting and ledger."""
