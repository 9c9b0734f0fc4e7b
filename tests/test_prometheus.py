"""The `services.prometheus.enabled` switch: the plan adds a Prometheus scraping every service of
the deployment; its config is what Prometheus reads (checked by the real `promtool` when present)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from orchestr.config import compose
from orchestr.launch.plan import build_plan
from orchestr.services.prometheus import scrape_config


def test_plan_scrapes_every_service_when_enabled():
    assert "prometheus" not in [s.name for s in build_plan(compose([]))]
    specs = build_plan(compose(["services.prometheus.enabled=true", "services.prometheus.port=9191"]))
    prom = specs[-1]
    assert prom.name == "prometheus" and prom.port == 9191 and prom.health_url.endswith(":9191/-/ready")
    targets = [prom.argv[i + 1] for i, a in enumerate(prom.argv) if a == "--target"]
    scraped = {t.split("=")[0] for t in targets}
    kinds = {s.service for s in specs if s.service not in ("web", "prometheus", "ray")}
    assert scraped == kinds and len(targets) == len([s for s in specs if s.service in kinds])


def test_config_groups_targets_and_uses_the_secret_file(tmp_path):
    cfg = scrape_config([("model_worker", "127.0.0.1:21002"), ("model_worker", "127.0.0.1:21003"),
                         ("controller", "127.0.0.1:21001")], 2.5, "/run/secret")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["model_worker"]["static_configs"][0]["targets"] == ["127.0.0.1:21002", "127.0.0.1:21003"]
    assert jobs["controller"]["authorization"] == {"type": "Bearer", "credentials_file": "/run/secret"}
    assert cfg["global"]["scrape_interval"] == "2.5s"
    if shutil.which("promtool"):
        (tmp_path / "secret").write_text("s")
        cfg = scrape_config([("controller", "127.0.0.1:21001")], 5, str(tmp_path / "secret"))
        (tmp_path / "p.yml").write_text(json.dumps(cfg))
        out = subprocess.run(["promtool", "check", "config", str(tmp_path / "p.yml")], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_missing_binary_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "orchestr.services.prometheus", "--binary", "no-such-prometheus",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no-such-prometheus" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(not shutil.which("prometheus"), reason="Debian's prometheus is not installed")
def test_real_prometheus_starts_on_the_config(tmp_path):
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestr.services.prometheus", "--port", str(port),
                             "--data-dir", str(tmp_path), "--target", "controller=127.0.0.1:1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets: list = []
        for _ in range(120):  # ready first, then the scrape targets appear
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=1)
                targets = r.json()["data"]["activeTargets"] if r.status_code == 200 else []
            except (httpx.HTTPError, ValueError, KeyError):
                targets = []
            if targets:
                break
            time.sleep(0.5)
        assert [t["labels"]["job"] for t in targets] == ["controller"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
