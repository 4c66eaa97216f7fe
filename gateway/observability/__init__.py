"""What each call leaves behind: its record and usage hook, the JSON log line, Prometheus metrics."""
