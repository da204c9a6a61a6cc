#!/usr/bin/env python3
"""CDK entry point: synthesize one environment, chosen with `-c env=<name>` (default: dev).

`-c config_dir=<path>` reads the environment files from another directory (default: the
sample app's, examples/samples/config; `make synth CONFIG=<path>` passes it).
`-c image_digest=sha256:...` deploys that prebuilt image of the config's `app.image.repository`
(`make deploy IMAGE_DIGEST=...`), so CI builds once and promotes the digest.
`-c compliance=true` adds cdk-nag's NIST 800-53 rev. 5 pack (as `make security` does).
"""

import sys
from pathlib import Path

from aws_cdk import App

from config import CONFIG_DIR, ConfigError, load_environment
from stacks.checks import attach_checks
from stacks.compliance import attach_compliance_checks
from stacks.platform import build_platform


def main() -> int:
    app = App()
    env_name = str(app.node.try_get_context("env") or "dev")
    config_dir = Path(app.node.try_get_context("config_dir") or CONFIG_DIR)
    try:
        config = load_environment(
            env_name,
            config_dir=config_dir,
            image_digest=app.node.try_get_context("image_digest") or None,
        )
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"config error: {line}", file=sys.stderr)
        return 1
    for line in config.advisories():
        print(f"config warning: {env_name}: {line}", file=sys.stderr)
    build_platform(app, config)
    if str(app.node.try_get_context("compliance")).lower() == "true":
        attach_compliance_checks(app)
    attach_checks(app)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
