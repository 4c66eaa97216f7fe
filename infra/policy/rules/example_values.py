"""Control `no-example-values` (deploy time only): nothing the stack would create uses a value shipped as an example."""
from __future__ import annotations

import re

from infra.policy.rules.base import Findings, PolicyConfig, Resources

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# The gateway image digest the stack files ship (infra/config.py PLACEHOLDER_DIGEST): "not built yet".
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
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
    "llm-platform:regions[].pools[].reservation.id first. In prod it also blocks a gateway release whose image "
    "is the placeholder digest (all zeros): no registry holds it, so every gateway pod would fail to pull. The "
    "bootstrap `up` (no policy pack) creates the image repository; push an image there and pin its digest in "
    "llm-platform:gateway.image_digest first (README: The gateway image). Previews pull prod's image and are not "
    "judged on it.")


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
    if policy.environment == "prod":
        for release in resources.of_type(HELM_RELEASE):
            image = ((release.inputs.get("values") or {}).get("image") or {}) if release.inputs.get(
                "name") == "gateway" else {}
            if "digest" not in image:
                continue
            found.judged(release, image_digest=image["digest"])
            if image["digest"] == PLACEHOLDER_DIGEST:
                found.fail(f"gateway release {release.name} in {release.region} pulls the placeholder image digest "
                           f"the stack file ships: push the image (.github/workflows/gateway-image.yml) and put "
                           f"the digest it prints in llm-platform:gateway.image_digest")
    return found
