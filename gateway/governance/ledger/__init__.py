"""The spend ledger: prices, spend records, the durable local spool and its flushing to the store."""
