"""`orchestr render k8s [--out DIR] overrides...`: the deployment as Kubernetes manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

TARGETS = ("k8s",)


def main() -> int:
    p = argparse.ArgumentParser(prog="orchestr render", description=__doc__)
    p.add_argument("target", choices=TARGETS, help="k8s: Deployments, Services, a ConfigMap")
    p.add_argument("--out", default=None, help="folder for the manifests (default: launch.kubernetes.output_dir)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for `orchestr launch` (cluster=multi_node ...)")
    args = p.parse_intermixed_args()
    from hydra.errors import HydraException

    from orchestr.config import compose
    from orchestr.errors import ConfigError
    from orchestr.launch.kubernetes import manifests, write
    from orchestr.launch.plan import build_plan

    try:
        cfg = compose(args.overrides)
        specs = build_plan(cfg)
    except (ConfigError, HydraException) as e:
        cause = f" ({str(e.__cause__).splitlines()[0]})" if e.__cause__ else ""
        print(f"orchestr render: {str(e).splitlines()[0]}{cause}", file=sys.stderr)
        return 2
    opts = OmegaConf.to_object(cfg.launch).kubernetes
    out = Path(args.out or opts.output_dir)
    paths = write(manifests(cfg, specs, opts), out)
    print(f"wrote {len(paths)} manifests to {out}/ (kubectl apply -f {out})")
    return 0
