"""cdk-nag wiring: the rule packs every environment must pass, and acknowledgements.

cdk-nag 3.x reports through CDK's policy validation: a finding fails `app.synth()` (and
`cdk synth`), and the report lands in `validation-report.json` in the cloud assembly.
"""

from aws_cdk import Acknowledgment, App, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

from config import EnvironmentConfig
from stacks.intrinsics import render_intrinsic

# cfn-lint findings accepted on the synthesized templates (tests and `make security`): what
# CDK generates itself, and what the config chooses on purpose.
CFN_LINT_IGNORED = {"W3005": "redundant DependsOn in CDK's own custom resource provider"}
CFN_LINT_IGNORED_WITH_AZS = {"W3010": "hard-coded AZs: the config names them on purpose"}


def cfn_lint_ignored(config: EnvironmentConfig) -> list[str]:
    ignored = dict(CFN_LINT_IGNORED)
    if config.network.availability_zones:
        ignored |= CFN_LINT_IGNORED_WITH_AZS
    return sorted(ignored)


PACK = "AwsSolutions"


def attach_checks(app: App) -> None:
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct | None, rule: str, reason: str) -> None:
    """Accept one finding of `rule` (e.g. "AwsSolutions-AEC5") on `scope` and its children.

    Attach it to the one resource it concerns, never to a stack, and say why it is acceptable.
    """
    if scope is None:
        raise ValueError(f"no construct to acknowledge {rule} on")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def acknowledge_wildcard_resource(scope: IConstruct, resource: str, reason: str) -> None:
    """Accept AwsSolutions-IAM5 for one wildcard `resource` (an ARN, tokens allowed) on the
    policy or role `scope`. The finding id names the resource as cdk-nag renders it."""
    rendered = render_intrinsic(Stack.of(scope).resolve(resource))
    acknowledge(scope, f"AwsSolutions-IAM5[Resource::{rendered}]", reason)
