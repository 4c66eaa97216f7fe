"""The ledger store (keys, teams, spend rows) in SQLite or PostgreSQL."""
