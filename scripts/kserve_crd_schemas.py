"""Extract KServe's CRD schemas for the manifest tests (tests/data/kserve/).

tests/integration/test_deploy_files.py validates deploy/kserve/*.yaml against the
``openAPIV3Schema`` of KServe's own CustomResourceDefinitions. They come from a KServe
checkout at a release tag (``config/crd/full/serving.kserve.io_*.yaml``), stored without
their descriptions (gzipped JSON: the InferenceService schema holds a whole PodSpec).

    git clone --branch v0.20.0 https://github.com/kserve/kserve /tmp/kserve
    python scripts/kserve_crd_schemas.py /tmp/kserve --out tests/data/kserve

It reads the checkout's tag (``git describe``) into ``VERSION`` beside the schemas.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

CRDS = ("clusterservingruntimes", "servingruntimes", "inferenceservices")


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a KServe git checkout at a release tag")
    parser.add_argument("--out", type=Path, default=Path("tests/data/kserve"))
    args = parser.parse_args(argv)
    tag = subprocess.run(
        ["git", "-C", str(args.checkout), "describe", "--tags", "--exact-match"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    for plural in CRDS:
        path = args.checkout / "config" / "crd" / "full" / f"serving.kserve.io_{plural}.yaml"
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strip(version["schema"]["openAPIV3Schema"])
            target = args.out / f"{kind}-{version['name']}.json.gz"
            text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
            # mtime=0: the same schema gives the same bytes.
            target.write_bytes(gzip.compress(text.encode(), mtime=0))
            print(f"{target}: {kind} serving.kserve.io/{version['name']} from {tag}")
    (args.out / "VERSION").write_text(f"kserve {tag}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
