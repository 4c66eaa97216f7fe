"""Where a call goes and getting its answer started: routing, attempts and fallbacks, the upstream client."""
