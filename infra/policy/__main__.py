"""The CrossGuard policy pack: `pulumi preview --policy-pack infra/policy --policy-pack-config
infra/policy/config/<stack>.json`."""
import sys
from pathlib import Path

# The CLI runs this file as a script from infra/policy; the rules import as `infra.*` from the repository root
# (already importable when the project is pip-installed into the pack's virtualenv, needed otherwise).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from infra.policy.pack import PACK_NAME, policies  # noqa: E402

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies(),
    description="llm-platform controls: budget cap, region residency, failover topology, secret scope, "
                "GPU pool hygiene, cluster hardening",
)
