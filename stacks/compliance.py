"""NIST 800-53 rev. 5 (cdk-nag) and the findings this platform accepts, with the reasons.

The pack runs in `make security` and with `cdk synth -c compliance=true`, not at every synth:
it doubles the rule count of each synthesis, and AwsSolutions already gates every test run.

Each acceptance names a rule, the one CloudFormation resource type it may sit on and, where
only some resources of that type qualify, a pattern their construct path must match. It is
attached to each matching resource on its own, never to a stack, so a finding on a resource
type or path not listed here still fails the synthesis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aws_cdk import Acknowledgment, App, CfnResource, Validations
from cdk_nag import NIST80053R5Checks

NIST_PACK = "NIST.800.53.R5"


@dataclass(frozen=True)
class Accepted:
    rule: str  # without the pack prefix, e.g. "LambdaDLQ"
    resource_type: str
    reason: str
    path: str = ""  # a regex the construct path must match (search); empty: every one

    @property
    def rule_id(self) -> str:
        return f"{NIST_PACK}-{self.rule}"

    def applies_to(self, resource: CfnResource) -> bool:
        return resource.cfn_resource_type == self.resource_type and (
            not self.path or re.search(self.path, resource.node.path) is not None
        )


_FLOWER_ALB = "The Flower load balancer"
_LOG_BUCKET = "The Flower ALB's access-log bucket"

ACCEPTED: tuple[Accepted, ...] = (
    Accepted(
        "IAMNoInlinePolicy",
        "AWS::IAM::Policy",
        "CDK's grant methods put each role's least-privilege statements in one policy "
        "attached to that role only, created and deleted with it; a customer-managed policy "
        "per role would grant exactly the same and could be attached elsewhere by mistake.",
    ),
    Accepted(
        "CloudWatchLogGroupEncrypted",
        "AWS::Logs::LogGroup",
        "CloudWatch Logs encrypts every log group at rest with keys AWS manages. These logs "
        "hold task names, ids and tracebacks, never credentials (secrets reach containers as "
        "ECS secrets); a customer-managed KMS key per environment would add a key policy for "
        "the regional logs service and a monthly key fee without narrowing who can read them.",
    ),
    Accepted(
        "LambdaDLQ",
        "AWS::Lambda::Function",
        "The autoscaler runs on a fixed EventBridge schedule: a failed run is superseded by "
        "the next one minutes later, so a queued failed event would only be stale; its errors "
        "and missed runs are alarmed on in the monitoring stack.",
        path=r"-autoscaler/Default/Function/",
    ),
    Accepted(
        "LambdaConcurrency",
        "AWS::Lambda::Function",
        "The autoscaler keeps its runs apart with an expiring lock in Redis (an invocation "
        "that finds it held skips and says so) instead: reserved concurrency fails stack "
        "creation in accounts with the default quota of 10 and takes capacity from the "
        "account's other functions, while the schedule invokes it once per interval.",
        path=r"-autoscaler/Default/Function/",
    ),
    Accepted(
        "VPCSubnetAutoAssignPublicIpDisabled",
        "AWS::EC2::Subnet",
        "Public subnets hold only the NAT gateways and an internet-facing load balancer; "
        "every ECS task and Lambda runs in the private subnets with public IPs turned off "
        "(assign_public_ip=False), which the services stack tests assert.",
        path=r"/Vpc/public[^/]*/Subnet$",
    ),
    Accepted(
        "VPCNoUnrestrictedRouteToIGW",
        "AWS::EC2::Route",
        "The default route to the internet gateway is what makes a public subnet public; "
        "only NAT gateways and load balancers live there, and private subnets route through "
        "NAT (or interface endpoints) instead.",
        path=r"/Vpc/public[^/]*/DefaultRoute$",
    ),
    Accepted(
        "SecretsManagerUsingKMSKey",
        "AWS::SecretsManager::Secret",
        "The secret is encrypted with the account's aws/secretsmanager key and read only by "
        "the ECS execution roles granted it in this app; a customer-managed key would be "
        "needed only to share it across accounts, which this platform never does.",
    ),
    Accepted(
        "SecretsManagerRotationEnabled",
        "AWS::SecretsManager::Secret",
        "The ElastiCache AUTH token cannot rotate by changing the secret alone: it takes "
        "ModifyReplicationGroup with AuthTokenUpdateStrategy ROTATE, then SET, while clients "
        "reconnect; rotate it that way by hand (docs/operations.md) until a rotation "
        "function ships.",
        path=r"/Broker/AuthToken/",
    ),
    Accepted(
        "SecretsManagerRotationEnabled",
        "AWS::SecretsManager::Secret",
        "The Flower password is a second layer behind the load balancer's own access control; "
        "Flower reads it at start, so rotate it by changing the secret and redeploying Flower.",
        path=r"/Flower/Password/",
    ),
    Accepted(
        "ElastiCacheRedisClusterAutomaticBackup",
        "AWS::ElastiCache::ReplicationGroup",
        "A broker snapshot holds transient queue state: restoring an old one would redeliver "
        "tasks that already ran. Retention is the environment's redis.snapshot_retention_days "
        "(up to 14 in prod); replicas with automatic failover protect the live queue.",
        path=r"/Broker/ReplicationGroup$",
    ),
    Accepted(
        "S3BucketLoggingEnabled",
        "AWS::S3::Bucket",
        f"{_LOG_BUCKET}: logging reads of a log bucket would need another bucket holding a "
        "log of logs; the bucket blocks public access and enforces TLS.",
        path=r"/Flower/AccessLogs/",
    ),
    Accepted(
        "S3DefaultEncryptionKMS",
        "AWS::S3::Bucket",
        f"{_LOG_BUCKET}: Elastic Load Balancing delivers access logs only to buckets "
        "encrypted with S3-managed keys (SSE-S3); a KMS default key would stop the delivery.",
        path=r"/Flower/AccessLogs/",
    ),
    Accepted(
        "S3BucketVersioningEnabled",
        "AWS::S3::Bucket",
        f"{_LOG_BUCKET}: the load balancer writes each log object once and never rewrites "
        "it; objects expire after 90 days, and versions would only keep deleted logs longer.",
        path=r"/Flower/AccessLogs/",
    ),
    Accepted(
        "S3BucketReplicationEnabled",
        "AWS::S3::Bucket",
        f"{_LOG_BUCKET}: access logs of a monitoring UI are diagnostic, not data of record; "
        "replicating them to a second region would double the buckets for no recovery need.",
        path=r"/Flower/AccessLogs/",
    ),
    Accepted(
        "ELBDeletionProtectionEnabled",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        f"{_FLOWER_ALB} holds no state: CloudFormation recreates it identically, and Flower "
        "is a monitoring UI whose loss never touches queued work.",
        path=r"/Flower/Alb/Resource$",
    ),
    Accepted(
        "ALBWAFEnabled",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        f"{_FLOWER_ALB} admits only the VPC (or the configured CIDRs) when internal, and only "
        "OIDC-authenticated users when internet-facing; a web ACL would filter traffic that "
        "either gate already stops, at a monthly fee per environment.",
        path=r"/Flower/Alb/Resource$",
    ),
    Accepted(
        "ELBv2ACMCertificateRequired",
        "AWS::ElasticLoadBalancingV2::Listener",
        f"{_FLOWER_ALB}'s plain-HTTP listener: on an internal ALB it admits only the VPC or "
        "the configured CIDRs, behind Flower's basic auth; internet-facing, port 80 only "
        "redirects to the HTTPS listener, which uses the configured ACM certificate.",
        path=r"/Flower/Alb/",
    ),
    Accepted(
        "ALBHttpToHttpsRedirection",
        "AWS::ElasticLoadBalancingV2::Listener",
        f"{_FLOWER_ALB}'s internal listener has no certificate to redirect to (private "
        "names have no public certificate); it is reachable only from the VPC or the "
        "configured CIDRs. Internet-facing environments redirect port 80 to HTTPS.",
        path=r"/Flower/Alb/Http/",
    ),
)


def attach_compliance_checks(app: App, *, accept: bool = True) -> int:
    """Add the NIST 800-53 rev. 5 pack to `app` and accept the findings listed above
    (`accept=False`: report them all, to check that each acceptance meets a finding).

    Call after the stacks are built. Returns how many acknowledgements were attached."""
    attached = 0
    for construct in app.node.find_all() if accept else []:
        if not isinstance(construct, CfnResource):
            continue
        for accepted in ACCEPTED:
            if accepted.applies_to(construct):
                Validations.of(construct).acknowledge(
                    Acknowledgment(id=accepted.rule_id, reason=accepted.reason)
                )
                attached += 1
    Validations.of(app).add_plugins(NIST80053R5Checks(app))
    return attached


def accepted_findings(app: App, violations: list[tuple[str, str]]) -> dict[Accepted, int]:
    """How many of `violations` ((rule id, construct path) of a synthesis without the
    acceptances) each acceptance covers; one that covers none is stale."""
    resources = {c.node.path: c for c in app.node.find_all() if isinstance(c, CfnResource)}
    covered = dict.fromkeys(ACCEPTED, 0)
    for rule_id, path in violations:
        resource = resources.get(path)
        for accepted in ACCEPTED:
            if (
                resource is not None
                and accepted.rule_id == rule_id
                and accepted.applies_to(resource)
            ):
                covered[accepted] += 1
    return covered
