"""StackSecrets: a stack's secret store per residency zone, encrypted with its own KMS key, replicated only inside the
zone."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.components.providers import child_opts

GET_SECRET = "secretsmanager:GetSecretValue"
# The first value of every secret. A secret created without a version has no AWSCURRENT value, and
# GetSecretValue on it fails (ResourceNotFoundException), so its readers would crash before anyone
# could put the real key in. The gateway reads this value as "not set yet" (the same literal is in
# gateway/governance/provider_keys.py; a test keeps them equal).
PLACEHOLDER = "llm-platform:placeholder (not set yet)"
# Values put in later (console, CLI, rotation) make a new version AWSCURRENT; the program must never
# write its placeholder back over them, whatever the refreshed state of this version says.
PLACEHOLDER_IGNORES = ["secretString", "versionStages"]
# A label of its own keeps the placeholder version from ever being deleted: Secrets Manager deletes
# versions left with no staging label (the second value put in after it would leave it so), the
# provider would then drop it from state, and the next `up` would create it again as AWSCURRENT over
# the real key (hashicorp/terraform-provider-aws#37302). Labels other than AWSCURRENT/AWSPREVIOUS
# are never moved or removed by PutSecretValue.
PLACEHOLDER_STAGES = ["AWSCURRENT", "LLMP_PLACEHOLDER"]


def secret_names(stack: str, providers: list[str]) -> list[str]:
    """Every secret a stack's gateway reads, under the stack's own path."""
    return [f"llm-platform/{stack}/providers/{p}" for p in providers] + [f"llm-platform/{stack}/gateway/master-key"]


def huggingface_token_name(stack: str) -> str:
    """The secret the model servers (and nothing else) read the Hugging Face token from."""
    return f"llm-platform/{stack}/huggingface/token"


def deny_all_but(readers: list[str], secret_arns: list[str], sid: str = "OnlyThisStacksGatewaysRead") -> dict[str, Any]:
    """Resource policy: nobody but the listed roles may read this secret, whatever their IAM policies say.
    It names every copy: Secrets Manager gives replicas the same policy, under their own ARNs."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": sid,
            "Effect": "Deny",
            "Principal": {"AWS": "*"},  # narrowed by the condition: a denial of everyone else, not a grant
            "Action": GET_SECRET,
            "Resource": sorted(secret_arns),
            "Condition": {"StringNotEquals": {"aws:PrincipalArn": sorted(readers)}},
        }],
    }


@dataclass(frozen=True)
class StackSecretsArgs:
    stack: str
    zone: str
    regions: list[str]  # the zone's regions in this stack; the first holds the primary copies
    providers: list[str]
    reader_role_arns: Sequence[pulumi.Input[str]]
    # The model servers' roles: the only readers of the Hugging Face token, created when this is set.
    model_reader_role_arns: Sequence[pulumi.Input[str]] | None = None
    # 0 deletes at once: a reaped pr-<n> stack must be re-creatable at the next push.
    recovery_window_days: int = 7


class StackSecrets(pulumi.ComponentResource):
    """`arns[region]` lists the gateway's secret ARNs in that region; `key_arns[region]` the KMS key there;
    `huggingface_token_arns[region]` the model servers' token there (empty without model readers)."""

    def __init__(self, name: str, args: StackSecretsArgs, providers: dict[str, aws.Provider],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:secrets:StackSecrets", name, None, opts)
        primary, replicas = args.regions[0], args.regions[1:]
        key = aws.kms.Key(
            f"{name}-key", description=f"llm-platform {args.stack} secrets ({args.zone})",
            multi_region=True, enable_key_rotation=True, deletion_window_in_days=30,
            opts=child_opts(self, providers[primary]))
        self.key_arns: dict[str, pulumi.Output[str]] = {primary: key.arn}
        for region in replicas:
            replica = aws.kms.ReplicaKey(
                f"{name}-key-{region}", primary_key_arn=key.arn, deletion_window_in_days=30,
                description=f"llm-platform {args.stack} secrets ({args.zone}), replica in {region}",
                opts=child_opts(self, providers[region]))
            self.key_arns[region] = replica.arn

        self.arns: dict[str, list[pulumi.Output[str]]] = {r: [] for r in args.regions}
        self.huggingface_token_arns: dict[str, pulumi.Output[str]] = {}
        # Each secret's readers, its policy's Sid, and where its ARNs are listed (if anywhere).
        readers_of: dict[str, tuple[Sequence[pulumi.Input[str]], str, dict[str, list[pulumi.Output[str]]] | None]] = {
            n: (args.reader_role_arns, "OnlyThisStacksGatewaysRead", self.arns)
            for n in secret_names(args.stack, args.providers)}
        if args.model_reader_role_arns:
            readers_of[huggingface_token_name(args.stack)] = (
                args.model_reader_role_arns, "OnlyThisStacksModelServersRead", None)
        for secret_name, (readers, sid, listed) in readers_of.items():
            short = secret_name.removeprefix(f"llm-platform/{args.stack}/").replace("/", "-")
            secret = aws.secretsmanager.Secret(
                f"{name}-{short}",
                name=secret_name,
                kms_key_id=key.arn,
                recovery_window_in_days=args.recovery_window_days,
                replicas=[aws.secretsmanager.SecretReplicaArgs(region=r, kms_key_id=self.key_arns[r])
                          for r in replicas],
                opts=child_opts(self, providers[primary]))
            if listed is not None:
                # The gateway must start before its keys are put in. The Hugging Face token gets no
                # placeholder: huggingface_hub would send it even for public models and fail with 401;
                # without a value, the pod's CSI mount waits (ContainerCreating, naming the secret) and
                # succeeds on its own once the token is put in.
                aws.secretsmanager.SecretVersion(
                    f"{name}-{short}-placeholder", secret_id=secret.id, secret_string=PLACEHOLDER,
                    version_stages=PLACEHOLDER_STAGES,
                    opts=child_opts(self, providers[primary], ignore_changes=PLACEHOLDER_IGNORES))
            copies = [_in_region(secret.arn, primary, region)
                      for region in args.regions]  # a replica keeps the primary's ARN, with its own region
            aws.secretsmanager.SecretPolicy(
                f"{name}-{short}",
                secret_arn=secret.arn,
                policy=_policy_json(copies, readers, sid),
                block_public_policy=True,
                opts=child_opts(self, providers[primary]))
            for region, copy in zip(args.regions, copies):
                if listed is None:
                    self.huggingface_token_arns[region] = copy
                else:
                    listed[region].append(copy)
        self.register_outputs({"key_arns": self.key_arns})


def _in_region(arn: pulumi.Output[str], primary: str, region: str) -> pulumi.Output[str]:
    return arn.apply(lambda a: a.replace(f":{primary}:", f":{region}:"))


def _policy_json(copies: list[pulumi.Output[str]], readers: Sequence[pulumi.Input[str]],
                 sid: str) -> pulumi.Output[str]:
    return pulumi.Output.all(pulumi.Output.all(*copies), *readers).apply(
        lambda a: json.dumps(deny_all_but(list(a[1:]), a[0], sid)))


def peer_key_name(stack: str) -> str:
    """The key the stack's regional gateways authenticate each other with when they sync keys and spend totals."""
    return f"llm-platform/{stack}/gateway/peer-key"


@dataclass(frozen=True)
class PeerKeyArgs:
    stack: str
    regions: list[str]  # every region of the stack; the first holds the primary copy
    key_arns: dict[str, pulumi.Input[str]]  # the stack's secrets key in each region (its zone's key there)
    reader_role_arns: Sequence[pulumi.Input[str]]  # every region's gateway role
    recovery_window_days: int = 7


class PeerKey(pulumi.ComponentResource):
    """One stack-wide secret, replicated to every region of the stack (across zones: it is a shared credential,
    never data). `arns[region]` is the copy the gateway of that region reads.

    It must hold the same value everywhere before any gateway starts, so the program writes it: a random value
    drawn at the first `up` (Secrets Manager's GetRandomPassword, no extra provider plugin). The invoke draws anew
    at every `up`; the version ignores its value after the first, like the placeholders above, so a value put in
    later (a rotation) stays."""

    def __init__(self, name: str, args: PeerKeyArgs, providers: dict[str, aws.Provider],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:secrets:PeerKey", name, None, opts)
        primary, replicas = args.regions[0], args.regions[1:]
        secret = aws.secretsmanager.Secret(
            name, name=peer_key_name(args.stack), kms_key_id=args.key_arns[primary],
            description="shared key of the stack's regional gateways (peer sync)",
            recovery_window_in_days=args.recovery_window_days,
            replicas=[aws.secretsmanager.SecretReplicaArgs(region=r, kms_key_id=args.key_arns[r]) for r in replicas],
            opts=child_opts(self, providers[primary]))
        value = aws.secretsmanager.get_random_password_output(
            password_length=48, exclude_punctuation=True,
            opts=pulumi.InvokeOutputOptions(provider=providers[primary], parent=self))
        # Labelled and ignored like a placeholder (see PLACEHOLDER_STAGES): a rotated value is never written over,
        # nor this version re-created as AWSCURRENT once rotations have left it unlabelled.
        aws.secretsmanager.SecretVersion(
            f"{name}-value", secret_id=secret.id, secret_string=pulumi.Output.secret(value.random_password),
            version_stages=PLACEHOLDER_STAGES,
            opts=child_opts(self, providers[primary], ignore_changes=PLACEHOLDER_IGNORES))
        self.arns = {region: _in_region(secret.arn, primary, region) for region in args.regions}
        aws.secretsmanager.SecretPolicy(
            name, secret_arn=secret.arn, block_public_policy=True,
            policy=_policy_json(list(self.arns.values()), args.reader_role_arns, "OnlyThisStacksGatewaysRead"),
            opts=child_opts(self, providers[primary]))
        self.register_outputs({"arns": self.arns})
