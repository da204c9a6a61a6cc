"""CloudFormation intrinsics as text, the way cdk-nag prints them in finding ids:
`{"Ref": "X"}` as <X>, `{"Fn::GetAtt": ["X", "Arn"]}` as <X.Arn>, an `Fn::Join` joined.

Plain Python: `stacks.checks` names findings with it, and the security sweep lists
wildcard ARNs of synthesized templates with it without loading the CDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def render_intrinsic(value: Any, other: Callable[[Any], str] | None = None) -> str:
    """`value` rendered; any other form goes to `other`, or is refused without it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return f"<{arg}>"
        if key == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>" if isinstance(arg, list) else f"<{arg}>"
        if key == "Fn::Join":
            separator, parts = arg
            return str(separator).join(render_intrinsic(part, other) for part in parts)
    if other is None:
        raise ValueError(f"cannot render {value!r} as a cdk-nag finding id")
    return other(value)
