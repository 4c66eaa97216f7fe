"""Virtual keys, teams, limits, budgets, the spend ledger and its store, provider secrets."""
