"""Routing across aliases: ladders of models tried cheapest first (ladder.py), the checks they escalate on."""
