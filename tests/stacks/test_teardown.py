"""Teardown and updates across stacks: what `cdk destroy` deletes and keeps, the order it
deletes in, and how a value one stack hands another reaches it on every later deploy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aws_cdk import App
from aws_cdk import aws_ec2 as ec2

from config import load_environment
from stacks.platform import Platform
from tests.stacks.test_data_stack import broker_groups, own_ingress
from tests.synth import Synth, synthesize

KEPT = {"Retain", "RetainExceptOnCreate"}

Resource = tuple[str, str]  # (stack name, logical id)


def templates(synth: Synth) -> dict[str, dict[str, Any]]:
    return {stack.stack_name: synth.template_json(stack) for stack in synth.platform.stacks}


def exports(all_templates: dict[str, dict[str, Any]]) -> dict[str, Resource]:
    """Export name -> the resource whose Ref or attribute the export carries."""
    found: dict[str, Resource] = {}
    for stack, template in all_templates.items():
        for output in template.get("Outputs", {}).values():
            if "Export" not in output:
                continue
            (logical,) = [r for _, r in references_in(output["Value"], stack, {})]
            found[output["Export"]["Name"]] = (stack, logical)
    return found


def references_in(node: Any, stack: str, exported: dict[str, Resource]) -> Iterator[Resource]:
    """Every resource `node` refers to: Ref, Fn::GetAtt, Fn::Sub, and Fn::ImportValue
    (resolved to the exporting stack's resource). Pseudo parameters are not resources."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str) and not value.startswith("AWS::"):
                yield stack, value
            elif key == "Fn::GetAtt":
                yield stack, value[0] if isinstance(value, list) else value.split(".")[0]
            elif key == "Fn::ImportValue" and isinstance(value, str) and exported:
                yield exported[value]
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                for part in text.split("${")[1:]:
                    name = part.split("}")[0].split(".")[0]
                    if not name.startswith("AWS::"):
                        yield stack, name
                yield from references_in(
                    value[1] if isinstance(value, list) else {}, stack, exported
                )
            else:
                yield from references_in(value, stack, exported)
    elif isinstance(node, list):
        for item in node:
            yield from references_in(item, stack, exported)


def test_every_dependency_of_a_kept_resource_is_kept(env_synth: Synth) -> None:
    """A retained resource whose subnet group, parameter group, security group, subnets or
    VPC are deleted leaves its stack (and the network stack) in DELETE_FAILED."""
    all_templates = templates(env_synth)
    exported = exports(all_templates)
    problems = []
    kept_count = 0
    for stack, template in all_templates.items():
        resources = template["Resources"]
        for logical, resource in resources.items():
            if resource.get("DeletionPolicy") not in KEPT:
                continue
            kept_count += 1
            for ref_stack, ref in references_in(resource.get("Properties", {}), stack, exported):
                target = all_templates[ref_stack]["Resources"].get(ref)
                if target is None:  # a template parameter, such as an SSM-typed one
                    continue
                if target.get("DeletionPolicy") not in KEPT:
                    problems.append(f"{stack}/{logical} keeps, but {ref_stack}/{ref} goes")
    assert kept_count, "every environment keeps at least its log groups"
    assert not problems, "\n".join(problems)


def test_a_kept_broker_keeps_its_network_and_a_snapshot_path_deletes_cleanly(
    synth_env: Any,
) -> None:
    def policies(synth: Synth, stack: Any, kind: str) -> set[str | None]:
        resources = synth.template_json(stack)["Resources"].values()
        return {r.get("DeletionPolicy") for r in resources if r["Type"] == kind}

    prod, staging = synth_env("prod"), synth_env("staging")
    assert prod.config.redis.removal_policy == "retain"
    for kind in ("AWS::ElastiCache::SubnetGroup", "AWS::ElastiCache::ParameterGroup"):
        assert policies(prod, prod.platform.data, kind) == {"Retain"}
    assert policies(prod, prod.platform.network, "AWS::EC2::VPC") == {"Retain"}
    # A final snapshot deletes the broker, so everything it stands on may go.
    assert staging.config.redis.removal_policy == "snapshot"
    assert policies(staging, staging.platform.network, "AWS::EC2::VPC") == {None}
    assert policies(staging, staging.platform.data, "AWS::ElastiCache::SubnetGroup") == {None}


def test_services_are_deleted_before_the_clusters_capacity_providers(env_synth: Synth) -> None:
    template = env_synth.template_json(env_synth.platform.services)
    resources = template["Resources"]
    (association,) = [
        k
        for k, r in resources.items()
        if r["Type"] == "AWS::ECS::ClusterCapacityProviderAssociations"
    ]
    services = [r for r in resources.values() if r["Type"] == "AWS::ECS::Service"]
    assert services
    for service in services:
        assert association in service.get("DependsOn", []), service["Properties"]["ServiceName"]


def test_stateful_stacks_are_termination_protected_where_data_must_survive(
    env_synth: Synth,
) -> None:
    keeps_data = env_synth.config.redis.removal_policy != "destroy"
    platform = env_synth.platform
    for stack in platform.stacks:
        artifact = env_synth.assembly.get_stack_by_name(stack.stack_name)
        stateful = stack in (platform.network, platform.data)
        assert artifact.termination_protection is (stateful and keeps_data), stack.stack_name


def test_stacks_hand_values_on_by_export(env_synth: Synth) -> None:
    """An export cannot change or go while another stack imports it: CloudFormation fails
    the update (and rolls it back) instead of leaving a consumer with a stale value, and
    refuses to delete a stack whose values are in use. Weak references did neither."""
    all_templates = templates(env_synth)
    text = json.dumps(all_templates)
    assert "Fn::GetStackOutput" not in text
    assert "Fn::ImportValue" in text
    # Worker services are named by literal: removing a group releases no export in use.
    for stack in (env_synth.platform.autoscaler, env_synth.platform.monitoring):
        imports = json.dumps(env_synth.template_json(stack))
        assert "ExportsOutputFnGetAttWorker" not in imports, stack.stack_name
        assert "ExportsOutputRefWorker" not in imports, stack.stack_name


def test_a_replaced_broker_group_reaches_every_rule_in_the_same_deploy(tmp_path: Path) -> None:
    """Every reference to the broker's security group is in its own template, so replacing
    the group (a changed description is enough) updates every rule that admits clients in
    the same stack update; the consumers reach it through the clients group and are left
    as they were."""

    def describe_differently(app: App, platform: Platform) -> None:
        group = platform.data.broker.security_group.node.default_child
        assert isinstance(group, ec2.CfnSecurityGroup)
        group.group_description = "Celery broker: a new definition"

    config = load_environment("dev")
    before = templates(synthesize(config, tmp_path / "before", checks=False))
    after = templates(
        synthesize(config, tmp_path / "after", extend=describe_differently, checks=False)
    )
    data = f"{config.project}-{config.name}-data"
    broker, _ = broker_groups(after[data])
    assert before[data] != after[data]
    own_ingress(after[data])  # the rule refers to the group by GetAtt, in the same template
    for stack, template in after.items():
        if stack == data:
            continue
        assert template == before[stack], f"{stack} would be left pointing at the old group"
        assert broker not in json.dumps(template), f"{stack} refers to the broker's own group"
