"""Control `no-example-values` (deploy time only): nothing the stack would create uses a value shipped as an example."""
from __future__ import annotations

import re

from infra.policy.rules.base import Findings, PolicyConfig, Resources

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
EC2_NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"  # a Karpenter pool's reservation selector
# The reservation ids Pulumi.prod.yaml ships (README: Running it for real, step 3). They are well formed,
# so config validation accepts them and the offline plan can price and judge the reserved pools; no
# account has them, so EC2 would refuse each H100 node group in the middle of an `up`.
EXAMPLE_RESERVATION = re.compile(r"^cr-0123456789abcdef[0-9a-f]$")

DESCRIPTION = (
    "Runs only in the CrossGuard pack, that is in a real `pulumi preview` or `pulumi up`, never in the offline "
    "plan (which judges the shipped example stacks as they are). It blocks a deploy whose launch templates or "
    "Karpenter EC2NodeClasses still target an example Capacity Reservation id (cr-0123456789abcdef0 to ...f): "
    "EC2 has no such reservation, "
    "so each reserved pool would fail mid-update. The operator puts the ids of the stack's own reservations in "
    "llm-platform:regions[].pools[].reservation.id first.")


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    for template in resources.of_type(LAUNCH_TEMPLATE):
        spec = template.inputs.get("capacityReservationSpecification") or {}
        target = (spec.get("capacityReservationTarget") or {}).get("capacityReservationId")
        if target is None:
            continue
        found.judged(template, capacity_reservation_id=target)
        if EXAMPLE_RESERVATION.match(str(target)):
            found.fail(f"launch template {template.name} in {template.region} targets {target}, the example "
                       f"reservation id the stack file ships: put the id of a Capacity Reservation (or Capacity "
                       f"Block) of your account in that pool's llm-platform:regions[].pools[].reservation.id")
    for node_class in resources.of_type(EC2_NODE_CLASS):
        terms = (node_class.inputs.get("spec") or {}).get("capacityReservationSelectorTerms") or []
        for target in [t.get("id") for t in terms if t.get("id")]:
            found.judged(node_class, capacity_reservation_id=target)
            if EXAMPLE_RESERVATION.match(str(target)):
                found.fail(f"EC2NodeClass {node_class.name} in {node_class.region} selects {target}, the example "
                           f"reservation id the stack file ships: put the id of a Capacity Reservation (or "
                           f"Capacity Block) of your account in that pool's "
                           f"llm-platform:regions[].pools[].reservation.id")
    return found
