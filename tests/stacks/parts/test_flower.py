"""Flower built alone in a bare stack: never reachable without authentication, /metrics
never through the load balancer."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk.assertions import Template

from config.model import FlowerConfig
from stacks.parts.flower import Flower
from tests.stacks.parts.test_celery_services import app_container, bare_runtime
from tests.synth import resources

OIDC = {
    "internet_facing": True,
    "certificate_arn": "arn:aws:acm:us-east-1:123456789012:certificate/abc",
    "oidc_issuer": "https://id.example.com",
    "oidc_authorization_endpoint": "https://id.example.com/authorize",
    "oidc_token_endpoint": "https://id.example.com/token",
    "oidc_user_info_endpoint": "https://id.example.com/userinfo",
    "oidc_client_id": "flower",
    "oidc_client_secret_name": "flower/oidc",
}


def bare_flower(**settings: Any) -> dict[str, Any]:
    # Access logs to S3 need the region (the bucket policy names its ELB account).
    stack = Stack(App(), "Bare", env=Environment(region="us-east-1"))
    Flower(
        stack,
        "Flower",
        runtime=bare_runtime(stack),
        config=FlowerConfig.model_validate(settings),
        vpc=bare_vpc(stack),
        allowed_cidrs=["10.9.0.0/16"],
        service_name="bare-flower",
        environment={},
    )
    return dict(Template.from_stack(stack).to_json())


def bare_vpc(stack: Stack) -> Any:
    # The runtime made the stack's VPC; Flower's load balancer stands in the same one.
    return stack.node.find_child("Vpc")


@pytest.mark.parametrize("settings", [{}, OIDC], ids=["internal", "internet-facing"])
def test_metrics_are_refused_and_the_health_check_is_flowers_exempt_path(
    settings: dict[str, Any],
) -> None:
    template = bare_flower(**settings)
    rules = resources(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
    (block,) = [r["Properties"] for r in rules]
    assert block["Priority"] == 1
    assert block["Conditions"][0]["PathPatternConfig"]["Values"] == ["/metrics", "/metrics/*"]
    assert block["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "403"
    (targets,) = resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert targets["Properties"]["HealthCheckPath"] == "/healthcheck"


def test_internal_by_default_behind_basic_auth_and_only_the_allowed_networks() -> None:
    template = bare_flower()
    (alb,) = resources(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert alb["Properties"]["Scheme"] == "internal"
    (listener,) = resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()
    assert listener["Properties"]["Protocol"] == "HTTP"
    assert listener["Properties"]["DefaultActions"][0]["Type"] == "forward"
    ingress = [
        rule
        for group in resources(template, "AWS::EC2::SecurityGroup").values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    ]
    assert {rule.get("CidrIp") for rule in ingress} == {"10.9.0.0/16"}
    # The password is generated in Secrets Manager and reaches the container as a secret.
    assert resources(template, "AWS::SecretsManager::Secret")
    assert "FLOWER_PASSWORD" in [
        s["Name"] for s in app_container(Template.from_json(template))["Secrets"]
    ]


def test_internet_facing_only_over_https_and_only_after_oidc_sign_in() -> None:
    template = bare_flower(**OIDC)
    (alb,) = resources(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert alb["Properties"]["Scheme"] == "internet-facing"
    listeners = {
        listener["Properties"]["Port"]: listener["Properties"]
        for listener in resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()
    }
    assert listeners[80]["DefaultActions"][0]["Type"] == "redirect"
    https = listeners[443]
    assert https["Protocol"] == "HTTPS"
    first, then = https["DefaultActions"]
    assert first["Type"] == "authenticate-oidc"
    assert then["Type"] == "forward"
    assert "flower/oidc" in str(first["AuthenticateOidcConfig"]["ClientSecret"])
