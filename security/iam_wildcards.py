"""Every IAM statement of the synthesized templates whose resource is a wildcard, and why.

Three kinds are listed: statements with `Resource: "*"`, statements whose ARNs end in a
wildcard, and AWS-managed policies attached to roles (their statements are not in the
template; the ones listed here grant `*` resources). Each needs a reason from the tables
below; anything without one is reported as unexplained and fails `make security`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacks.intrinsics import render_intrinsic

# Actions granted on `Resource: "*"`, each with why no narrower resource is possible.
STAR_ACTION_REASONS: dict[str, str] = {
    "ecr:GetAuthorizationToken": (
        "has no resource-level permissions (the service authorization reference lists no "
        "resource type for it); it returns a registry login token, and image pulls stay "
        "limited to the repository the execution role is granted"
    ),
}

# Wildcard ARNs: (action, regex on the ARN rendered with intrinsics as <Ref>) -> reason.
WILDCARD_ARN_REASONS: tuple[tuple[str, str, str], ...] = (
    (
        "ecs:GetTaskProtection",
        r":task/<Cluster[^>]*>/\*$",
        "a worker protects its own task from scale-in; task ids exist only once ECS starts "
        "a task, so the policy names every task of this platform's one cluster",
    ),
    (
        "ecs:UpdateTaskProtection",
        r":task/<Cluster[^>]*>/\*$",
        "a worker protects its own task from scale-in; task ids exist only once ECS starts "
        "a task, so the policy names every task of this platform's one cluster",
    ),
    (
        "s3:GetObject",
        r"^arn:[^:]+:s3:::[^/]+/[^*]*\*$",
        "the objects (under a prefix) of a bucket the app's config grants its tasks "
        "(worker_groups.<group>.grants): object keys are the app's, the bucket is named",
    ),
    (
        "s3:PutObject",
        r"^arn:[^:]+:s3:::[^/]+/[^*]*\*$",
        "the objects (under a prefix) of a bucket the app's config grants its tasks "
        "(worker_groups.<group>.grants): object keys are the app's, the bucket is named",
    ),
    (
        "s3:AbortMultipartUpload",
        r"^arn:[^:]+:s3:::[^/]+/[^*]*\*$",
        "the objects (under a prefix) of a bucket the app's config grants its tasks "
        "(worker_groups.<group>.grants): object keys are the app's, the bucket is named",
    ),
)

# AWS-managed policies attached to roles, and why each (with its `*` resources) is needed.
MANAGED_POLICY_REASONS: dict[str, str] = {
    "AWSLambdaBasicExecutionRole": (
        "logs:CreateLogGroup/CreateLogStream/PutLogEvents on *: the function writes its own "
        "logs; every function here also has an explicit log group with retention"
    ),
    "AWSLambdaVPCAccessExecutionRole": (
        "ec2:CreateNetworkInterface/DescribeNetworkInterfaces/DeleteNetworkInterface on *: "
        "Lambda creates the function's ENIs in the VPC (the autoscaler reads Redis there); "
        "ENI ids are not known before, and EC2 scopes these calls by resource only at run time"
    ),
}


@dataclass(frozen=True)
class Grant:
    template: str
    logical_id: str
    kind: str  # "Resource *", "wildcard ARN", "managed policy"
    actions: tuple[str, ...]
    resource: str
    reason: str | None

    @property
    def explained(self) -> bool:
        return self.reason is not None


def render(value: Any) -> str:
    """An ARN with CloudFormation intrinsics shown as cdk-nag shows them (<Ref>,
    <Resource.Attribute>), `Fn::Sub` variables as <Name>, anything else as JSON."""
    return render_intrinsic(value, _render_other)


def _render_other(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        arg = value["Fn::Sub"]
        text = arg if isinstance(arg, str) else arg[0]
        return re.sub(r"\$\{([^}]+)\}", r"<\1>", str(text))
    return json.dumps(value, sort_keys=True)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _documents(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    properties = resource.get("Properties", {})
    kind = resource.get("Type")
    if kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        yield properties.get("PolicyDocument", {})
    elif kind in ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"):
        for policy in properties.get("Policies", []):
            yield policy.get("PolicyDocument", {})


def _star_reason(actions: tuple[str, ...]) -> str | None:
    reasons = [STAR_ACTION_REASONS.get(action) for action in actions]
    if not actions or any(reason is None for reason in reasons):
        return None
    return "; ".join(f"{action} {reason}" for action, reason in zip(actions, reasons, strict=True))


def _wildcard_arn_reason(actions: tuple[str, ...], arn: str) -> str | None:
    reasons = []
    for action in actions:
        found = [
            r for a, pattern, r in WILDCARD_ARN_REASONS if a == action and re.search(pattern, arn)
        ]
        if not found:
            return None
        reasons.append(found[0])
    return "; ".join(dict.fromkeys(reasons)) or None


def grants_in_template(name: str, template: dict[str, Any]) -> list[Grant]:
    grants: list[Grant] = []
    for logical_id, resource in template.get("Resources", {}).items():
        for document in _documents(resource):
            for statement in _as_list(document.get("Statement", [])):
                if statement.get("Effect") != "Allow":
                    continue  # a Deny on * narrows, it never grants
                actions = tuple(str(a) for a in _as_list(statement.get("Action", [])))
                for value in _as_list(statement.get("Resource", [])):
                    arn = render(value)
                    if arn == "*":
                        reason = _star_reason(actions)
                        grants.append(Grant(name, logical_id, "Resource *", actions, arn, reason))
                    elif "*" in arn:
                        reason = _wildcard_arn_reason(actions, arn)
                        grants.append(Grant(name, logical_id, "wildcard ARN", actions, arn, reason))
        if resource.get("Type") == "AWS::IAM::Role":
            for value in resource.get("Properties", {}).get("ManagedPolicyArns", []):
                arn = render(value)
                policy = arn.rsplit("/", 1)[-1]
                if ":iam::aws:policy/" not in arn:
                    continue  # a customer-managed policy: its statements are in a template
                reason = MANAGED_POLICY_REASONS.get(policy)
                grants.append(Grant(name, logical_id, "managed policy", (), policy, reason))
    return grants


def grants_in(templates: Iterable[Path]) -> list[Grant]:
    grants: list[Grant] = []
    for path in sorted(templates):
        grants += grants_in_template(path.name, json.loads(path.read_text()))
    return grants
