"""Resources that hold data keep the logical ids deployed stacks know them by, in every
environment: a new id is a new resource, and CloudFormation deletes (or, where retained,
orphans) the old one. A replaced broker loses every queued message; a replaced log group,
bucket or key starts empty. A refactor that moves a construct must keep these."""

from __future__ import annotations

from aws_cdk import Stack

from tests.synth import Synth

# Per stack of the platform (its attribute on Platform): logical id -> type.
STATEFUL_IDS: dict[str, dict[str, str]] = {
    "data": {
        "BrokerReplicationGroupC7814FB9": "AWS::ElastiCache::ReplicationGroup",
        "BrokerSubnetGroup61EAF853": "AWS::ElastiCache::SubnetGroup",
        "BrokerParameters9E6D77B2": "AWS::ElastiCache::ParameterGroup",
        "BrokerAuthToken5ACAD3C2": "AWS::SecretsManager::Secret",
        "BrokerSecurityGroup4607CDDC": "AWS::EC2::SecurityGroup",
        "BrokerSlowLogFF1053F1": "AWS::Logs::LogGroup",
        "BrokerEngineLog1B1BCF18": "AWS::Logs::LogGroup",
    },
    "network": {"FlowLogs16C1943A": "AWS::Logs::LogGroup"},
    "services": {
        "FlowerAccessLogs9D9B09E9": "AWS::S3::Bucket",
        "FlowerLogs2CC1890B": "AWS::Logs::LogGroup",
        "BeatLogs509D7568": "AWS::Logs::LogGroup",
        # The sample catalog's worker groups (a group's log group is named after it).
        "WorkergeneralLogsFC5A9EA5": "AWS::Logs::LogGroup",
        "WorkerbatchLogsF7D5DFC4": "AWS::Logs::LogGroup",
    },
    "autoscaler": {"Logs6819BB44": "AWS::Logs::LogGroup"},
    "monitoring": {"AlarmTopicKey57B0D3A7": "AWS::KMS::Key"},
}
# Types of which a stack holds only the pinned ones (the broker's own kinds): a second one
# would be a replacement under a new id.
ONLY_PINNED = {
    "AWS::ElastiCache::ReplicationGroup",
    "AWS::ElastiCache::SubnetGroup",
    "AWS::ElastiCache::ParameterGroup",
    "AWS::S3::Bucket",
    "AWS::KMS::Key",
}


def test_the_stateful_resources_keep_their_logical_ids(env_synth: Synth) -> None:
    for part, pinned in STATEFUL_IDS.items():
        stack: Stack = getattr(env_synth.platform, part)
        template = env_synth.template_json(stack)["Resources"]
        found = {k: r["Type"] for k, r in template.items() if k in pinned}
        assert found == pinned, f"{stack.stack_name}: {sorted(set(pinned) - set(found))}"
        others = [k for k, r in template.items() if r["Type"] in ONLY_PINNED and k not in pinned]
        assert not others, f"{stack.stack_name}: unpinned {others}"
