"""FailoverDns: in the stack's DNS zone, a certificate and health-checked latency records per regional gateway."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.providers import child_opts

HEALTH_PATH = "/health/ready"


def regional_host(region: str, domain: str) -> str:
    """Each region's gateway also answers on <region>.<domain>: for health checks and cross-region fallback."""
    return f"{region}.{domain}"


def zone_host(residency: str, domain: str) -> str:
    """A residency zone's name, <zone>.<domain>: it resolves only to the zone's own regions."""
    return f"{residency}.{domain}"


@dataclass(frozen=True)
class FailoverDnsArgs:
    zone: str
    domain: str
    residency: dict[str, str]  # region -> its residency zone


class FailoverDns(pulumi.ComponentResource):
    """Route53 drops a region from `domain` and from its zone's name as soon as its gateway's health check fails.

    Each name is its own latency record set, and Route 53 picks only among the records of the set
    asked for; when every record of a set is unhealthy it answers as if all were healthy
    (https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/health-checks-how-route-53-chooses-records.html,
    "If no record is healthy, all records are healthy"). So `<zone>.<domain>` never resolves outside
    its zone, even when the whole zone is down; `domain` spans every region and carries only models
    without a residency restriction (a gateway answers 421 for a model restricted to another zone).

    The zone is the operator's: a public hosted zone, delegated once from its parent, that stacks
    only add records to. A zone the stack created itself would not be delegated yet, and its
    certificates could never validate; pr-<n> stacks share the preview zone this way."""

    def __init__(self, name: str, args: FailoverDnsArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:dns:FailoverDns", name, None, opts)
        self.args, self.provider = args, provider
        self._records: dict[str, aws.route53.Record] = {}
        self.zone_id = aws.route53.get_zone_output(
            name=args.zone, private_zone=False, opts=pulumi.InvokeOutputOptions(provider=provider, parent=self)).zone_id
        self.register_outputs({"zone_id": self.zone_id})

    def certificate(self, region: str, provider: aws.Provider) -> pulumi.Output[str]:
        """An ACM certificate in `region` for the domain, regional name and zone name, validated in the zone."""
        name = f"{self._name}-{region}"
        alternatives = [regional_host(region, self.args.domain),
                        zone_host(self.args.residency[region], self.args.domain)]
        cert = aws.acm.Certificate(
            name, domain_name=self.args.domain, subject_alternative_names=alternatives,
            validation_method="DNS", opts=child_opts(self, provider))
        records = [self._validation_record(cert, host) for host in (self.args.domain, *alternatives)]
        validation = aws.acm.CertificateValidation(
            name, certificate_arn=cert.arn, validation_record_fqdns=[r.fqdn for r in records],
            opts=child_opts(self, provider))
        return validation.certificate_arn

    def _validation_record(self, cert: aws.acm.Certificate, host: str) -> aws.route53.Record:
        """One record per name, shared by every certificate naming it: ACM asks the same record of each
        region's certificate for the shared domain, and one stack resource must own it, whichever
        region's certificate it was read from, so removing a region never deletes it."""
        if host not in self._records:
            option = cert.domain_validation_options.apply(lambda opts: next(o for o in opts if o.domain_name == host))
            self._records[host] = aws.route53.Record(
                f"{self._name}-validation-{host}", zone_id=self.zone_id, name=option.resource_record_name,
                type=option.resource_record_type, records=[option.resource_record_value], ttl=300,
                allow_overwrite=True, opts=child_opts(self, self.provider))
        return self._records[host]

    def add_region(self, region: str, load_balancer_hostname: pulumi.Input[str]) -> aws.route53.HealthCheck:
        name = f"{self._name}-{region}"
        host = regional_host(region, self.args.domain)
        child = child_opts(self, self.provider)
        aws.route53.Record(f"{name}-direct", zone_id=self.zone_id, name=host, type="CNAME",
                           records=[load_balancer_hostname], ttl=60, opts=child)
        check = aws.route53.HealthCheck(
            name, type="HTTPS", fqdn=host, port=443, resource_path=HEALTH_PATH, enable_sni=True,
            request_interval=10, failure_threshold=3, measure_latency=True,
            tags={"Name": f"llm-platform gateway {region}"}, opts=child)
        for suffix, record_name in (("latency", self.args.domain),
                                    ("zone-latency", zone_host(self.args.residency[region], self.args.domain))):
            aws.route53.Record(
                f"{name}-{suffix}", zone_id=self.zone_id, name=record_name, type="CNAME", set_identifier=region,
                latency_routing_policies=[aws.route53.RecordLatencyRoutingPolicyArgs(region=region)],
                health_check_id=check.id, records=[load_balancer_hostname], ttl=60, opts=child)
        return check
