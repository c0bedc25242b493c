#!/usr/bin/env python3
"""Checks the Helm chart deploy/helm/sluice without a Kubernetes cluster.

For every values file in deploy/helm/sluice/ci/:
  1. lint with Helm's Go SDK (helm-python-sdk), strict, for each Kubernetes version;
  2. render (values.schema.json is enforced on render) and split into documents;
  3. validate every manifest with kubernetes-validate --strict against the schemas of
     Kubernetes 1.29 to 1.33; the custom resources it has no schema for (KEDA's ScaledObject and
     TriggerAuthentication, the Prometheus Operator's ServiceMonitor) against the JSON Schemas
     deploy/helm/*.schema.json, written from their documented specs;
  4. assert what the chart promises (2 schedulers, readiness on /readyz, the executors' grace
     period = preStop + drain deadline + margin, PDBs, key files 0400, NetworkPolicies, a
     ScaledObject exactly when KEDA is on, ...).
Then wrong values must fail at render with a message naming the value.

    $(scripts/python-venv.sh) deploy/check-chart.py

Prints one line per values file and Kubernetes version, one per wrong value, and a last line
`N passed, N failed`; exits non-zero on any failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import tomllib
import traceback
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import yaml
from helm_python.chart import Chart, lint

DEPLOY = Path(__file__).resolve().parent
CHART = DEPLOY / "helm" / "sluice"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
RELEASE, NAMESPACE = "sluice", "data"
# Custom resources: (apiVersion, kind) -> the schema written for them.
CR_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): DEPLOY / "helm" / "scaledobject.schema.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): DEPLOY / "helm" / "triggerauthentication.schema.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): DEPLOY / "helm" / "servicemonitor.schema.json",
}
# The keys each process's TOML config accepts (serde deny_unknown_fields): the fields of
# SchedulerProcessConfig (scheduler/src/config.rs) and ExecutorConfig (executor/src/lib.rs).
SCHEDULER_KEYS = {
    "bind", "advertise", "log-format", "executor-timeout-seconds", "expire-dead-executor-interval-seconds",
    "executor-termination-grace-period-seconds", "finished-job-data-clean-up-seconds", "min-ready-executors",
    "task-max-failures", "stage-max-failures", "job-stall-timeout-seconds", "event-log-dir", "flight-sql-bind",
    "auth-token-file", "allow-anonymous", "tls-cert", "tls-key", "tls-client-ca", "cluster-ca", "cluster-cert",
    "cluster-key", "data-roots", "catalog", "state", "etcd-endpoints", "cluster", "lease-ttl-seconds",
    "etcd-connect-timeout-seconds", "etcd-ca", "etcd-cert", "etcd-key",
}
EXECUTOR_KEYS = {
    "scheduler", "bind", "grpc-port", "advertise-host", "work-dir", "vcores", "memory-limit", "log-format",
    "heartbeat-interval-seconds", "scheduler-connect-timeout-seconds", "cluster-ca", "cluster-cert", "cluster-key",
}
# Files the binaries refuse when group or others can read them.
PRIVATE_SUFFIXES = (".key", "tokens")

# (what, values, the words the error must contain: the value's name)
NEGATIVE = [
    ("scheduler.replicas is a string", {"scheduler": {"replicas": "two"}}, ["scheduler", "replicas"]),
    ("executor.drainDeadlineSeconds < 0", {"executor": {"drainDeadlineSeconds": -1}}, ["drainDeadlineSeconds"]),
    ("an unknown top-level key", {"schedulr": {"replicas": 2}}, ["schedulr"]),
    ("an unknown scheduler.config key", {"scheduler": {"config": {"executor-timeout": 30}}}, ["executor-timeout"]),
    ("a chart-owned config key", {"scheduler": {"config": {"bind": "0.0.0.0:1"}}}, ["bind"]),
    ("etcd.mode bogus", {"etcd": {"mode": "bogus"}}, ["etcd", "mode"]),
    ("tracing.otlpEndpoint not a URL", {"tracing": {"otlpEndpoint": "collector:4317"}}, ["tracing", "otlpEndpoint"]),
    ("etcd.bundled.replicas even", {"etcd": {"bundled": {"replicas": 2}}}, ["etcd", "replicas"]),
    ("external etcd without endpoints", {"etcd": {"mode": "external"}}, ["etcd.external.endpoints"]),
    ("a short token", {"tls": {"enabled": True, "existingSecret": "c"},
                       "auth": {"tokens": [{"token": "short", "role": "admin"}]}}, ["token"]),
    ("a token role", {"tls": {"enabled": True, "existingSecret": "c"},
                      "auth": {"tokens": [{"token": "x" * 20, "role": "root"}]}}, ["role"]),
    ("tokens without cluster TLS", {"auth": {"tokens": [{"token": "x" * 20, "role": "read"}]}}, ["auth.tokens", "tls.enabled"]),
    ("Flight SQL without tokens", {"flightSql": {"enabled": True}}, ["flightSql.enabled"]),
    ("TLS without certificates", {"tls": {"enabled": True}}, ["tls.cluster.ca"]),
    ("etcd TLS without cluster TLS", {"etcd": {"tls": {"enabled": True}}}, ["etcd.tls.enabled"]),
    ("spot and nodeAffinity", {"executor": {"spot": {"enabled": True}, "nodeAffinity": {"x": 1}}}, ["executor.nodeAffinity"]),
    ("drain longer than the scheduler waits", {"executor": {"drainDeadlineSeconds": 60}}, ["executor.drainDeadlineSeconds"]),
    ("KEDA min above max", {"keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 2}}, ["keda.minReplicaCount"]),
    ("log format", {"logFormat": "xml"}, ["logFormat"]),
    ("image pull policy", {"image": {"pullPolicy": "Sometimes"}}, ["pullPolicy"]),
    ("a port out of range", {"executor": {"metricsPort": 70000}}, ["metricsPort"]),
]


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


def render(values: dict) -> dict[str, str]:
    with Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                check(isinstance(doc, dict) and "kind" in doc, f"{template}: a document without kind")
                docs.append(doc)
    return docs


def validate(doc: dict, version: str) -> None:
    """kubernetes-validate --strict, or the project's schema for a custom resource."""
    key = (doc["apiVersion"], doc["kind"])
    where = f'{doc["kind"]}/{doc["metadata"]["name"]}'
    if key in CR_SCHEMAS:
        schema = json.loads(CR_SCHEMAS[key].read_text())
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        check(not errors, f"{where}: " + "; ".join(f'{"/".join(map(str, e.path))}: {e.message}' for e in errors))
        return
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise Failure(f'{where} (Kubernetes {version}): {"/".join(map(str, e.path))}: {e.message}') from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise Failure(f"{where}: {e.message}") from None


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in by_kind(docs, kind)
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    check(len(found) == 1, f"expected one {kind} for {component}, found {len(found)}")
    return found[0]


def facts(values: dict, docs: list[dict]) -> None:
    """What the chart promises, whatever the values file."""
    merged = merged_values(values)
    tls = merged["tls"]["enabled"]

    sched = one(docs, "Deployment", "scheduler")
    check(sched["spec"]["replicas"] == merged["scheduler"]["replicas"], "scheduler replicas")
    if "scheduler" not in values or "replicas" not in values.get("scheduler", {}):
        check(sched["spec"]["replicas"] == 2, "scheduler replicas default 2")
    sc = container(sched, "scheduler")
    env = {e["name"]: e.get("value") for e in sc.get("env", [])}
    endpoint = merged["tracing"]["otlpEndpoint"]
    check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == (endpoint or None), "traces exported exactly when tracing.otlpEndpoint is set")
    probe = sc["readinessProbe"]["httpGet"]
    check(probe["path"] == "/readyz", "scheduler readiness path /readyz")
    check(probe["port"] == "scheduler", "readiness on the scheduler port")
    check(probe["scheme"] == ("HTTPS" if tls else "HTTP"), f"readiness scheme with tls={tls}")
    check(sc["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness /healthz")
    env = {e["name"]: e for e in sc["env"]}
    check("SLUICE_ETCD_ENDPOINTS" in env and env["SLUICE_ETCD_ENDPOINTS"]["value"], "schedulers get etcd endpoints")
    check(env["SLUICE_ADVERTISE"]["value"].startswith("$(POD_IP):"), "schedulers advertise their pod IP")
    check(env["SLUICE_CLUSTER"]["value"] == merged["clusterName"], "cluster name")

    pdbs = [d for d in by_kind(docs, "PodDisruptionBudget")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "scheduler"]
    check(len(pdbs) == 1, "a PodDisruptionBudget for the schedulers")

    ex = one(docs, "Deployment", "executor")
    e = merged["executor"]
    grace = ex["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    want = e["preStopSleepSeconds"] + e["drainDeadlineSeconds"] + e["terminationMarginSeconds"]
    check(grace == want, f"executor grace period {grace} = preStop + drain deadline + margin = {want}")
    check(grace > e["drainDeadlineSeconds"], "grace period beyond the drain deadline")
    ec = container(ex, "executor")
    check(ec["lifecycle"]["preStop"]["sleep"]["seconds"] == e["preStopSleepSeconds"], "executor preStop sleep")
    ports = {p["name"] for p in ec["ports"]}
    check("task" in ports, "the push task port (behind the TLS relay with cluster TLS)")
    check("metrics" in ports, "executor metrics port")
    keda = merged["keda"]["enabled"]
    check(("replicas" in ex["spec"]) == (not keda), "executor replicas left to KEDA when it is on")
    if e["spot"]["enabled"]:
        aff = ex["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        key = ("requiredDuringSchedulingIgnoredDuringExecution" if e["spot"]["required"]
               else "preferredDuringSchedulingIgnoredDuringExecution")
        check(key in aff, f"spot affinity {key}")
        tol = ex["spec"]["template"]["spec"]["tolerations"]
        check(all(t in tol for t in e["spot"]["tolerations"] + e["tolerations"]), "spot tolerations")

    for d in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        pod = d["spec"]["template"]["spec"]
        sc_pod = pod["securityContext"]
        check(sc_pod["runAsNonRoot"] and sc_pod["runAsUser"] == 65532, f'{d["metadata"]["name"]}: non-root 65532')
        for c in pod["containers"] + pod.get("initContainers", []):
            s = c["securityContext"]
            check(s["readOnlyRootFilesystem"] and s["capabilities"]["drop"] == ["ALL"]
                  and s["allowPrivilegeEscalation"] is False, f'{d["metadata"]["name"]}/{c["name"]}: locked down')
        private_files(d)

    sms, sos = by_kind(docs, "ServiceMonitor"), by_kind(docs, "ScaledObject")
    check(len(sos) == (1 if keda else 0), "a ScaledObject exactly when KEDA is on")
    check(len(sms) == (1 if merged["serviceMonitor"]["enabled"] else 0), "a ServiceMonitor exactly when asked")
    if keda:
        trig = sos[0]["spec"]["triggers"][0]
        check(trig["type"] == "external", "external scaler trigger")
        check(trig["metadata"]["scalerAddress"] == f"{RELEASE}-scheduler.{NAMESPACE}.svc:{merged['scheduler']['port']}",
              "scalerAddress is the scheduler Service")
        check(sos[0]["spec"]["minReplicaCount"] == merged["keda"]["minReplicaCount"], "KEDA minReplicaCount")
        check(("authenticationRef" in trig) == tls, "KEDA authenticates with the client certificate under TLS")
    services = {d["metadata"]["name"] for d in by_kind(docs, "Service")}
    check(f"{RELEASE}-scheduler" in services, "scheduler Service")
    check((f"{RELEASE}-flight-sql" in services) == merged["flightSql"]["enabled"], "Flight SQL Service exactly when on")
    bundled = merged["etcd"]["mode"] == "bundled"
    sts = by_kind(docs, "StatefulSet")
    check(len(sts) == (1 if bundled else 0), "etcd StatefulSet exactly when bundled")
    if bundled:
        args = container(sts[0], "etcd")["args"]
        initial = next(a for a in args if a.startswith("--initial-cluster="))
        check(initial.count("=") - 1 == merged["etcd"]["bundled"]["replicas"], "initial-cluster lists every member")
        scheme = "https" if merged["etcd"]["tls"]["enabled"] else "http"
        check(all(u.startswith(scheme + "://") for u in env["SLUICE_ETCD_ENDPOINTS"]["value"].split(",")),
              f"etcd endpoints use {scheme}")
        check(("--client-cert-auth" in args) == merged["etcd"]["tls"]["enabled"], "etcd client-cert-auth with TLS")
    nps = by_kind(docs, "NetworkPolicy")
    check(len(nps) == (3 if bundled else 2), "NetworkPolicies for schedulers, executors (and etcd)")
    config = next(d for d in by_kind(docs, "ConfigMap"))["data"]
    for f, known in (("scheduler.toml", SCHEDULER_KEYS), ("executor.toml", EXECUTOR_KEYS)):
        toml = tomllib.loads(config[f])
        check(not set(toml) - known, f"{f}: keys the process would refuse: {sorted(set(toml) - known)}")
        check(("cluster-key" in toml) == tls, f"{f}: cluster certificates exactly with TLS")
    sched_toml = tomllib.loads(config["scheduler.toml"])
    check(sched_toml["state"] == "etcd", "schedulers keep their state in etcd")
    check(sched_toml["bind"] == f"0.0.0.0:{merged['scheduler']['port']}", "scheduler bind")
    check(("flight-sql-bind" in sched_toml) == merged["flightSql"]["enabled"], "flight-sql-bind exactly when on")


def container(workload: dict, name: str) -> dict:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def private_files(workload: dict) -> None:
    """Keys and token files: Secret volumes mode 0400, and Sluice containers read them only from
    the 0400 copies the install-keys init container makes (an fsGroup makes Secret files 0440)."""
    pod = workload["spec"]["template"]["spec"]
    name = workload["metadata"]["name"]
    secrets = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    for vol, secret in secrets.items():
        check(secret.get("defaultMode") in (0o400, 0o600), f"{name}: Secret volume {vol} defaultMode 0400/0600")
        for item in secret.get("items", []):
            if item["path"].endswith(PRIVATE_SUFFIXES):
                check(item.get("mode", secret["defaultMode"]) in (0o400, 0o600), f"{name}: {item['path']} mode")
    if "etcd" in name and not name.endswith("-executor"):
        return  # etcd reads its key from the Secret volume; it does not refuse 0440.
    for c in pod["containers"]:
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        check(not (mounted & set(secrets)), f"{name}/{c['name']}: reads Secret volumes only through the 0400 copies")
    if secrets:
        init = next(c for c in pod["initContainers"] if c["name"] == "install-keys")
        check("chmod 0400" in init["args"][0] and "umask 077" in init["args"][0], f"{name}: keys copied with mode 0400")
        check({m["name"] for m in init["volumeMounts"]} >= set(secrets), f"{name}: every Secret volume copied")
        keys = next(v for v in pod["volumes"] if v["name"] == "keys")
        check(keys["emptyDir"].get("medium") == "Memory", f"{name}: keys on a memory emptyDir")


def merged_values(values: dict) -> dict:
    base = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) and v else v
        return out

    return merge(base, values)


def main() -> int:
    passed = failed = 0

    def report(ok: bool, line: str, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {line}" + (f": {detail}" if detail else ""), flush=True)

    print(f"helm-python-sdk {helm_python.__version__} (Helm {helm_python.helm_sdk_version()}), "
          f"kubernetes-validate {kubernetes_validate.version.__version__}, jsonschema {importlib.metadata.version('jsonschema')}")
    check_schema_files()
    for path in CI_VALUES:
        values = yaml.safe_load(path.read_text()) or {}
        label = path.name
        try:
            docs = documents(render(values))
            facts(values, docs)
        except Exception as e:  # noqa: BLE001 - report every case, then exit non-zero
            report(False, f"{label} render", error_text(e))
            continue
        for version in KUBE_VERSIONS:
            try:
                result = lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{version}")
                problems = [m for m in result["messages"] if m["severity"] >= 2] + [
                    {"error": e} for e in result["errors"]]
                check(not problems, "lint: " + "; ".join(m["error"] for m in problems))
                for doc in docs:
                    validate(doc, version)
                kinds = sorted({d["kind"] for d in docs})
                report(True, f"{label} k8s {version}", f"lint clean, {len(docs)} manifests valid ({', '.join(kinds)})")
            except Exception as e:  # noqa: BLE001
                report(False, f"{label} k8s {version}", error_text(e))
    for what, values, words in NEGATIVE:
        try:
            render(values)
        except (helm_python.HelmError, Exception) as e:  # noqa: BLE001
            message = str(e)
            missing = [w for w in words if w not in message]
            report(not missing, f"wrong value refused: {what}",
                   (f"message lacks {missing}: " if missing else "") + first_line(message))
        else:
            report(False, f"wrong value refused: {what}", "rendered without error")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def check_schema_files() -> None:
    for path in [CHART / "values.schema.json", *CR_SCHEMAS.values()]:
        jsonschema.Draft7Validator.check_schema(json.loads(path.read_text()))


def first_line(message: str) -> str:
    return " ".join(message.split())[:300]


def error_text(e: Exception) -> str:
    if isinstance(e, (Failure, helm_python.HelmError)):
        return first_line(str(e))
    return first_line("".join(traceback.format_exception_only(type(e), e)))


if __name__ == "__main__":
    sys.exit(main())
