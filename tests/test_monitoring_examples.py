"""The monitoring example: compose.yaml's "monitoring" profile runs Prometheus
scraping tusserver and Grafana provisioned with examples/grafana-dashboard.json,
whose every query names a metric a real scrape of tusserver has."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.server_fixtures import RunningServer
from tusserver import redis_urls

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"
# What a family's samples add to its name (counters, histograms).
SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts: container path -> file in the repository."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = source.removeprefix("./")
    return found


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\btusserver_[a-z_]+", target["expr"]))
    return names


def test_the_monitoring_profile_runs_prometheus_and_a_provisioned_grafana() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert "profiles" not in services["tusserver"], "tusserver runs with or without the profile"
    for service in (prometheus, grafana):
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
        for source in mounts(service).values():
            assert (ROOT / source).is_file(), source

    # Prometheus scrapes the tusserver service's port at tusserver's default path.
    config_file = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    scrape = yaml.safe_load((ROOT / config_file).read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"][0]["targets"] == ["tusserver:8080"]
    assert "8080:8080" in services["tusserver"]["ports"][0]

    # Grafana: the datasource points at the prometheus service under the uid
    # the dashboard uses, and the dashboards folder holds the dashboard.
    grafana_mounts = mounts(grafana)
    datasource_file = grafana_mounts["/etc/grafana/provisioning/datasources/tusserver.yml"]
    (datasource,) = yaml.safe_load((ROOT / datasource_file).read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    provider_file = grafana_mounts["/etc/grafana/provisioning/dashboards/tusserver.yml"]
    (provider,) = yaml.safe_load((ROOT / provider_file).read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = [path for target, path in grafana_mounts.items() if target.startswith(folder)]
    assert dashboards == ["examples/grafana-dashboard.json"]

    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]


def test_the_dashboard_shows_throughput_uploads_in_progress_errors_and_latency() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {
        panel["title"]: " ".join(target["expr"] for target in panel["targets"])
        for panel in dashboard["panels"]
    }
    assert "tusserver_stored_bytes_total" in exprs["Throughput"]
    assert "tusserver_patches_in_flight" in exprs["Uploads in progress"]
    assert 'status=~"4..|5.."' in exprs["Error rates"]
    assert "histogram_quantile(0.99" in exprs["Latency percentiles"]


def test_every_metric_the_dashboard_queries_is_in_a_scrape_of_tusserver(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(5)
    server.patch(url, 0, b"hello")
    text = httpx.get(server.url + "/metrics").text
    families = {family.name for family in text_string_to_metric_families(text)}
    exported = {family + suffix for family in families for suffix in SUFFIXES}

    queried = queried_metrics(json.loads(DASHBOARD.read_text()))
    assert len(queried) >= 15
    assert queried <= exported, queried - exported


def test_the_sentinel_profile_points_tusserver_at_its_three_sentinels_and_a_replica() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    tusserver = services["tusserver-sentinel"]
    target = redis_urls.parse(tusserver["environment"]["TUSSERVER_REDIS_URL"])

    assert target.topology is redis_urls.Topology.SENTINEL
    sentinels = [host for host, _ in target.nodes]
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in sentinels:
        assert services[name]["profiles"] == ["sentinel"]
        assert f"sentinel monitor {target.service} redis 6379 2" in services[name]["command"][2]
    assert "--replicaof" in services["redis-replica"]["command"]
    assert tusserver["environment"]["TUSSERVER_REDIS_REPLICAS"] == "1"
