"""The Helm chart: lint, render (defaults and every flag on), Kubernetes schema validation."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.conftest import BOOTSTRAP, render
from tests.deploy.tools import (
    ALERTS,
    ALL_ON_VALUES,
    CHART,
    DASHBOARD,
    KUBE_VERSION,
    REPO_ROOT,
    run,
    tool,
)

CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [m for m in by_kind(manifests, kind) if m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [m["metadata"]["name"] for m in found])
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --------------------------------------------------------------------------- lint and schemas
@pytest.mark.parametrize(
    "values",
    [["--set", f"kafka.bootstrapServers={BOOTSTRAP}"], ["-f", str(ALL_ON_VALUES)]],
    ids=["defaults", "all-on"],
)
def test_helm_lint(values: list[str]) -> None:
    result = run(
        [tool("helm"), "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *values]
    )
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize("which", ["default_manifests", "all_on_manifests"])
def test_every_manifest_matches_the_kubernetes_schemas(
    which: str, request: pytest.FixtureRequest
) -> None:
    manifests: list[dict[str, Any]] = request.getfixturevalue(which)
    assert manifests
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CRDS:
            continue  # not in the Kubernetes schemas: checked by test_monitoring_resources
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")
        assert manifest["metadata"]["namespace"] == "streaming"


def test_default_render_has_no_optional_resources(default_manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(m["kind"] for m in default_manifests)
    assert kinds == sorted(
        [
            "ConfigMap",  # config
            "ConfigMap",  # topology for the topics hook
            "Deployment",
            "Job",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ]
    )


def test_every_flag_on_renders_every_resource(all_on_manifests: list[dict[str, Any]]) -> None:
    kinds = {m["kind"] for m in all_on_manifests}
    assert kinds >= {
        "HorizontalPodAutoscaler",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
        "StatefulSet",
        "Deployment",
        "Job",
    }
    assert len(by_kind(all_on_manifests, "ServiceMonitor")) == 2


# --------------------------------------------------------------------------- workers
def test_workers_statefulset(default_manifests: list[dict[str, Any]]) -> None:
    sts = one(default_manifests, "StatefulSet")
    headless = one(default_manifests, "Service", "-worker-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert sts["spec"]["replicas"] == 3
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["worker", "--no-create-topics"]
    env = env_of(container)
    assert env["ENGAGEMENT_INDEX_BOOTSTRAP_SERVERS"] == BOOTSTRAP
    assert env["ENGAGEMENT_INDEX_WEB_BIND"] == "0.0.0.0"
    assert env["ENGAGEMENT_INDEX_WEB_PORT"] == "6066"
    assert env["ENGAGEMENT_INDEX_WEB_HOST"] == (
        f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local"
    )
    assert env["ENGAGEMENT_INDEX_DATA_DIR"] == "/var/lib/engagement-index"
    assert env["ENGAGEMENT_INDEX_MODEL_FILE"] == "/etc/engagement-index/config/model-default.yaml"
    assert env["ENGAGEMENT_INDEX_TOPOLOGY_FILE"] == "/etc/engagement-index/config/topology.yaml"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {
        "/var/lib/engagement-index": "data",
        "/tmp": "tmp",
        "/etc/engagement-index/config": "config",
    }
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800, "generous startup"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert "checksum/config" in sts["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("kind", ["StatefulSet", "Deployment", "Job"])
def test_hardened_security_contexts(kind: str, all_on_manifests: list[dict[str, Any]]) -> None:
    for manifest in by_kind(all_on_manifests, kind):
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsUser"] == 10001
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_kafka_credentials_come_from_secrets(all_on_manifests: list[dict[str, Any]]) -> None:
    for manifest in [
        *by_kind(all_on_manifests, "StatefulSet"),
        *by_kind(all_on_manifests, "Deployment"),
        *by_kind(all_on_manifests, "Job"),
    ]:
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        assert env["ENGAGEMENT_INDEX_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["ENGAGEMENT_INDEX_SASL_MECHANISM"] == "SCRAM-SHA-512"
        for name, key in (
            ("ENGAGEMENT_INDEX_SASL_PASSWORD", "password"),
            ("ENGAGEMENT_INDEX_SASL_USERNAME", "username"),
        ):
            assert env[name] == {"secretKeyRef": {"name": "engagement-index-kafka", "key": key}}
        assert env["ENGAGEMENT_INDEX_SSL_CAFILE"] == "/etc/engagement-index/kafka-ca/ca.crt"
        assert env["ENGAGEMENT_INDEX_SSL_CERTFILE"] == "/etc/engagement-index/kafka-client/user.crt"
        assert env["ENGAGEMENT_INDEX_SSL_KEYFILE"] == "/etc/engagement-index/kafka-client/user.key"
        volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-ca"]["secret"]["secretName"] == "my-cluster-cluster-ca-cert"
        assert volumes["kafka-client"]["secret"]["secretName"] == "engagement-index-kafka-user"
    assert not by_kind(all_on_manifests, "Secret"), "credentials are referenced, never rendered"


def test_every_rendered_setting_is_a_real_setting(
    all_on_manifests: list[dict[str, Any]],
) -> None:
    """The chart sets only ENGAGEMENT_INDEX_* variables the service really reads."""
    from engagement_index.collector.settings import CollectorSettings
    from engagement_index.settings import Settings

    known = {f"ENGAGEMENT_INDEX_{name.upper()}" for name in Settings.model_fields}
    known |= {
        f"ENGAGEMENT_INDEX_COLLECTOR_{name.upper()}" for name in CollectorSettings.model_fields
    }
    rendered: set[str] = set()
    for manifest in [
        *by_kind(all_on_manifests, "StatefulSet"),
        *by_kind(all_on_manifests, "Deployment"),
        *by_kind(all_on_manifests, "Job"),
    ]:
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            rendered |= {e["name"] for e in container.get("env", [])}
    ours = {name for name in rendered if name.startswith("ENGAGEMENT_INDEX_")}
    assert ours - known == set()
    assert {
        "ENGAGEMENT_INDEX_SASL_PASSWORD",
        "ENGAGEMENT_INDEX_SSL_CERTFILE",
        "ENGAGEMENT_INDEX_API_AUTH",
        "ENGAGEMENT_INDEX_API_TOKENS_FILE",
    } <= ours


def test_all_on_worker_settings(all_on_manifests: list[dict[str, Any]]) -> None:
    sts = one(all_on_manifests, "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["ENGAGEMENT_INDEX_BATCH_SIZE"] == "500"
    assert env["ENGAGEMENT_INDEX_MODEL_FILE"].endswith("/model-demo.yaml")
    assert container["args"] == ["worker"]
    assert container["image"].endswith("@sha256:" + "0" * 64)
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Delete",
    }


# --------------------------------------------------------------------------- collector
def test_collector(all_on_manifests: list[dict[str, Any]]) -> None:
    deployment = one(all_on_manifests, "Deployment", "-collector")
    assert "replicas" not in deployment["spec"], "the autoscaler owns replicas"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["collector"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(container)
    assert env["ENGAGEMENT_INDEX_COLLECTOR_BIND"] == "0.0.0.0"
    assert (
        env["ENGAGEMENT_INDEX_COLLECTOR_KEYS_FILE"]
        == "/etc/engagement-index/collector-keys/keys.yaml"
    )
    assert env["ENGAGEMENT_INDEX_COLLECTOR_EVENT_MAP_FILE"] == (
        "/etc/engagement-index/config/collector-segment-events.yaml"
    )
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["collector-keys"]["secret"]["secretName"] == "engagement-index-collector-keys"
    ingress = one(all_on_manifests, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == deployment["metadata"]["name"]


def test_collector_can_be_turned_off() -> None:
    manifests = render(
        "--set", f"kafka.bootstrapServers={BOOTSTRAP}", "--set", "collector.enabled=false"
    )
    assert not [m for m in manifests if m["metadata"]["name"].endswith("-collector")]


# --------------------------------------------------------------------------- config and topics
def test_config_map_holds_the_topology_and_models(default_manifests: list[dict[str, Any]]) -> None:
    data = one(default_manifests, "ConfigMap", "-config")["data"]
    assert (
        data["topology.yaml"].strip()
        == (REPO_ROOT / "streams" / "topology.yaml").read_text().strip()
    )
    for model in (REPO_ROOT / "config" / "models").glob("*.yaml"):
        assert data[f"model-{model.name}"].strip() == model.read_text().strip()
    assert "collector-segment-events.yaml" in data


def test_topics_job_is_a_pre_install_and_pre_upgrade_hook(
    default_manifests: list[dict[str, Any]],
) -> None:
    job = one(default_manifests, "Job")
    hook_config = one(default_manifests, "ConfigMap", "-topics")
    for manifest in (job, hook_config):
        assert manifest["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_config["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["args"] == [
        "topics",
        "create",
        "--topology",
        "/etc/engagement-index/config/topology.yaml",
    ]
    assert pod["volumes"][1]["configMap"]["name"] == hook_config["metadata"]["name"]


def test_pod_disruption_budgets(default_manifests: list[dict[str, Any]]) -> None:
    worker = one(default_manifests, "PodDisruptionBudget", "-worker")
    assert worker["spec"]["maxUnavailable"] == 1
    sts = one(default_manifests, "StatefulSet")
    assert worker["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


# --------------------------------------------------------------------------- monitoring
def test_monitoring_resources(all_on_manifests: list[dict[str, Any]]) -> None:
    services = {m["metadata"]["name"]: m for m in by_kind(all_on_manifests, "Service")}
    for monitor in by_kind(all_on_manifests, "ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [
            name
            for name, svc in services.items()
            if selector.items() <= svc["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, (monitor["metadata"]["name"], matched)
        assert matched[0].endswith(("engagement-index-worker", "engagement-index-collector"))
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "http"
        assert endpoint["path"] == "/metrics"
        assert set(endpoint) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "relabelings",
            "metricRelabelings",
        }
    rule = one(all_on_manifests, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text()), "PrometheusRule == alerts.yaml"
    dashboard = one(all_on_manifests, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["engagement-index.json"] == DASHBOARD.read_text().rstrip("\n")


def test_prometheus_rule_passes_promtool(
    all_on_manifests: list[dict[str, Any]], tmp_path: Any
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(one(all_on_manifests, "PrometheusRule")["spec"]))
    run([tool("promtool"), "check", "rules", str(rules_file)])


# --------------------------------------------------------------------------- refused values
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "kafka.bootstrapServers is required"),
        (["--set", "worker.replicas=7"], "must not exceed the topology's scoring_partitions (6)"),
        (["--set", "kafka.securityProtocol=SASL_SSL"], "needs kafka.sasl.mechanism"),
        (
            ["--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.sasl.mechanism=PLAIN"],
            "kafka.sasl.existingSecret is required",
        ),
        (
            ["--set", "kafka.sasl.mechanism=PLAIN", "--set", "kafka.sasl.existingSecret=s"],
            "needs kafka.securityProtocol SASL_SSL",
        ),
        (["--set", "model.name=nope"], 'model.name "nope"'),
        (
            ["--set", "kafka.tls.clientCertSecret=c"],
            "kafka.tls.clientCertSecret needs kafka.securityProtocol SSL or SASL_SSL",
        ),
    ],
    ids=[
        "no-bootstrap",
        "replicas>partitions",
        "sasl-without-mechanism",
        "sasl-without-secret",
        "mechanism-without-sasl",
        "unknown-model",
        "client-cert-without-tls",
    ],
)
def test_impossible_values_are_refused(values: list[str], message: str) -> None:
    bootstrap = [] if not values else ["--set", f"kafka.bootstrapServers={BOOTSTRAP}"]
    result = run(
        [
            tool("helm"),
            "template",
            "ei",
            str(CHART),
            "--kube-version",
            KUBE_VERSION,
            *bootstrap,
            *values,
        ],
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


# --------------------------------------------------------------------------- documented values
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):")


def test_every_value_is_documented() -> None:
    """Every value in values.yaml has its own `# --` comment, or sits inside a documented one."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        comments = []
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comments.append(lines[above].strip())
            above -= 1
        documented[tuple(k for _, k in stack)] = any(c.startswith("# --") for c in comments)

    def ok(path: tuple[str, ...]) -> bool:
        if documented[path]:
            return True
        children = [p for p in documented if len(p) == len(path) + 1 and p[: len(path)] == path]
        return bool(children) and all(ok(child) for child in children)

    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def covered(path: tuple[str, ...]) -> bool:
        return any(documented[path[:n]] for n in range(1, len(path) + 1))

    missing = [".".join(p) for p in documented if not ok(p) and not covered(p)]
    leaves = [m for m in missing if not any(o.startswith(m + ".") for o in missing)]
    assert all(ok(p) for p in documented if len(p) == 1), f"no `# --` comment: {leaves}"
    assert {p[0] for p in documented if len(p) == 1} == set(values)
