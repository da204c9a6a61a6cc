"""checkov findings this platform accepts, each on the resources it names and with a reason.

Matched on (check id, resource type, logical id regex); a failed check that matches no row
is an unacknowledged finding and fails `make security`. Where checkov repeats a cdk-nag NIST
rule, the reason is the one `stacks/compliance.py` gives, so the two never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stacks.compliance import ACCEPTED


def _nist(rule: str, path_part: str = "") -> str:
    """The reason stacks/compliance.py gives for `rule` (on the row whose path has `path_part`)."""
    for accepted in ACCEPTED:
        if accepted.rule == rule and path_part in accepted.path:
            return accepted.reason
    raise KeyError(f"no accepted NIST finding {rule} ({path_part})")


@dataclass(frozen=True)
class Skip:
    check_id: str
    resource_type: str
    logical_id: str  # regex, matched from the start
    reason: str

    def matches(self, check_id: str, resource: str) -> bool:
        resource_type, _, logical_id = resource.partition(".")
        return (
            check_id == self.check_id
            and resource_type == self.resource_type
            and re.match(self.logical_id, logical_id) is not None
        )


_CDK_SG_HANDLER = (
    "CDK's own handler that strips the rules of the VPC's default security group at deploy "
    "time (restrictDefaultSecurityGroup); it runs once per deployment, called by "
    "CloudFormation, and calls only the EC2 API"
)

SKIPS: tuple[Skip, ...] = (
    Skip("CKV_AWS_158", "AWS::Logs::LogGroup", r".", _nist("CloudWatchLogGroupEncrypted")),
    Skip("CKV_AWS_149", "AWS::SecretsManager::Secret", r".", _nist("SecretsManagerUsingKMSKey")),
    Skip("CKV_AWS_116", "AWS::Lambda::Function", r"Function[0-9A-F]{8}$", _nist("LambdaDLQ")),
    Skip(
        "CKV_AWS_115",
        "AWS::Lambda::Function",
        r"Function[0-9A-F]{8}$",
        _nist("LambdaConcurrency", "autoscaler"),
    ),
    Skip(
        "CKV_AWS_116",
        "AWS::Lambda::Function",
        r"CustomVpcRestrictDefaultSGCustomResourceProviderHandler",
        f"{_CDK_SG_HANDLER}: a failure fails the deployment, so no event is lost.",
    ),
    Skip(
        "CKV_AWS_115",
        "AWS::Lambda::Function",
        r"CustomVpcRestrictDefaultSGCustomResourceProviderHandler",
        f"{_CDK_SG_HANDLER}: reserving concurrency for it would take capacity from the account.",
    ),
    Skip(
        "CKV_AWS_117",
        "AWS::Lambda::Function",
        r"CustomVpcRestrictDefaultSGCustomResourceProviderHandler",
        f"{_CDK_SG_HANDLER}: it reaches nothing inside the VPC.",
    ),
    Skip(
        "CKV_AWS_173",
        "AWS::Lambda::Function",
        r"Function[0-9A-F]{8}$",
        "Lambda encrypts environment variables at rest with an AWS-managed key; these hold "
        "names, ARNs and the queue catalog, never a secret value (the autoscaler reads the "
        "AUTH token from Secrets Manager at run time), so a customer key would protect nothing.",
    ),
    Skip("CKV_AWS_18", "AWS::S3::Bucket", r"FlowerAccessLogs", _nist("S3BucketLoggingEnabled")),
    Skip("CKV_AWS_21", "AWS::S3::Bucket", r"FlowerAccessLogs", _nist("S3BucketVersioningEnabled")),
    Skip(
        "CKV_AWS_2",
        "AWS::ElasticLoadBalancingV2::Listener",
        r"FlowerAlbHttp[0-9A-F]{8}$",
        _nist("ALBHttpToHttpsRedirection"),
    ),
    Skip(
        "CKV_AWS_103",
        "AWS::ElasticLoadBalancingV2::Listener",
        r"FlowerAlbHttp[0-9A-F]{8}$",
        _nist("ALBHttpToHttpsRedirection"),
    ),
)


def skip_for(check_id: str, resource: str) -> Skip | None:
    for skip in SKIPS:
        if skip.matches(check_id, resource):
            return skip
    return None


def reason_for(check_id: str, resource: str) -> str | None:
    skip = skip_for(check_id, resource)
    return None if skip is None else skip.reason
