"""A local Prometheus for a deployment (``services.prometheus.enabled=true``): writes a scrape
config naming every orchestr service of the plan and runs Debian's ``prometheus`` on it.

Internal services want the service secret: it goes to a 0600 file next to the config and
Prometheus sends it as a bearer token (never on the command line).

Run: ``python -m orchestr.services.prometheus --port 9090 --target controller=127.0.0.1:21001
--target model_worker=127.0.0.1:21002 --target openai_api_server=127.0.0.1:8000``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from orchestr.config.flags import add_flags
from orchestr.config.serving import PrometheusServiceConfig
from orchestr.secrets import service_secret


def scrape_config(targets: list[tuple[str, str]], interval_s: float, secret_file: str | None) -> dict:
    """Prometheus' configuration: one job per service kind, its instances as static targets."""
    jobs: dict[str, list[str]] = {}
    for job, target in targets:
        jobs.setdefault(job, []).append(target)
    scrape = []
    for job, addrs in jobs.items():
        entry: dict = {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": addrs}]}
        if secret_file:
            entry["authorization"] = {"type": "Bearer", "credentials_file": secret_file}
        scrape.append(entry)
    interval = f"{interval_s:g}s"
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": scrape}


def _target(value: str) -> tuple[str, str]:
    job, sep, addr = value.partition("=")
    if not sep or not job or ":" not in addr:
        raise argparse.ArgumentTypeError(f"--target wants JOB=HOST:PORT, got {value!r}")
    return job, addr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestr.services.prometheus", description=__doc__.split("\n")[0])
    add_flags(parser, PrometheusServiceConfig)  # services.prometheus: one declaration of each flag
    parser.add_argument("--target", type=_target, action="append", default=[], help="JOB=HOST:PORT (repeat)")
    args = parser.parse_args(argv)
    binary = shutil.which(args.binary)
    if binary is None:
        print(f"orchestr prometheus: {args.binary!r} not found; install it (Debian: apt-get install prometheus) "
              "or set services.prometheus.enabled=false", file=sys.stderr)
        sys.exit(2)
    data = Path(args.data_dir).expanduser()
    data.mkdir(parents=True, exist_ok=True)
    secret_file = None
    secret = service_secret()
    if secret:
        path = data / "service-secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        secret_file = str(path)
    config = data / "prometheus.yml"
    # JSON is YAML: Prometheus reads it as is
    config.write_text(json.dumps(scrape_config(args.target, args.scrape_interval_s, secret_file), indent=2))
    os.execv(binary, [binary, f"--config.file={config}", f"--storage.tsdb.path={data / 'tsdb'}",
                      f"--web.listen-address={args.host}:{args.port}"])


if __name__ == "__main__":
    main()
