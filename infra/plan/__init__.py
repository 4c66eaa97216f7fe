"""Offline plan: run the Pulumi program under the mock engine, record what it creates, cost it, judge it."""
