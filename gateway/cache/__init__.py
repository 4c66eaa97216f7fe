"""The response cache: exact-match answers replayed to the same scope (config: gateway/config/cache.py)."""
