"""Limiters: scopes and tickets, in-process counters, and counters shared through Redis by leases."""
