"""Print the stacks a synthesis wrote: `python -m stacks.list_stacks cdk.out`."""

import json
import sys
from pathlib import Path


def main(outdir: str) -> int:
    manifest = json.loads((Path(outdir) / "manifest.json").read_text())
    stacks = {
        name: artifact["properties"]["templateFile"]
        for name, artifact in manifest["artifacts"].items()
        if artifact["type"] == "aws:cloudformation:stack"
    }
    print(f"synthesized {len(stacks)} stacks into {outdir}/:")
    for name, template in stacks.items():
        print(f"  {name:<32} {outdir}/{template}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cdk.out"))
