"""`llmp verify`: checks a stack as deployed (clusters through the `kubernetes` client, gateways over HTTPS).

targets.py  what the stack's config says must be there, named by the program's own functions
cluster.py  NodePools and their nodes, model releases, the gateway workload, per region
calls.py    gateway readiness and stores, chat calls, session affinity, residency refusals
results.py  PASS, FAIL and NOT JUDGED lines, and JSON
run.py      the command: arguments, order of checks, exit code
"""
