"""cdk-nag wiring: the rule packs every environment must pass, and acknowledgements.

cdk-nag 3.x reports through CDK's policy validation: a finding fails `app.synth()` (and
`cdk synth`), and the report lands in `validation-report.json` in the cloud assembly.
"""

from aws_cdk import Acknowledgment, App, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

PACK = "AwsSolutions"


def attach_checks(app: App) -> None:
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Accept one finding of `rule` (e.g. "AwsSolutions-AEC5") on `scope` and its children.

    Attach it to the one resource it concerns, never to a stack, and say why it is acceptable.
    """
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))
