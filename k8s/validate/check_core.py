"""Offline checks of rendered manifests (the output of `kubectl kustomize`).

* Core kinds are validated strictly (unknown fields are errors) against the
  Kubernetes schema of the given GKE minor version, with kubernetes-validate.
  The Rollout's pod template is validated the same way, as a PodTemplate.
* Custom resources (Argo Rollouts, Istio) are written to --crds for
  check_crds.mjs.
* Project rules: every environment variable a container gets is one its binary
  reads (`--help`) or one API.md reserves for it; the drain budget fits in the
  grace period and the sidecar's drain; the HPA targets the Rollout; images
  were set by the overlay; prod uses Bigtable, Pub/Sub with a spool volume and
  a migration mode; the load test's rates and report count add up.
* The admin port (container port `admin`: /metrics, /healthz, /readyz) is
  where the probes and the scrape go, the admin listen variable binds it,
  and no Service exposes it; the public gateway's routes forward only
  `/v1/`.

Exit 1 with one line per problem.
"""

import argparse
import os
import json
import re
import sys

import kubernetes_validate
import yaml

CRD_GROUPS = ("argoproj.io/", "networking.istio.io/", "security.istio.io/")
# Rule objects (GKE Managed Prometheus Rules, prometheus-operator
# PrometheusRule): checked to carry exactly the groups of the rule file,
# which promtool checks and tests.
RULE_KINDS = {("monitoring.googleapis.com/v1", "Rules"), ("monitoring.coreos.com/v1", "PrometheusRule")}
RULES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "monitoring", "rules.yaml")


SCRAPE_KINDS = {("monitoring.googleapis.com/v1", "PodMonitoring")}


def check_scrape_objects(ck, by_kind, workloads):
    """Each PodMonitoring selects a workload's pods and scrapes its admin
    port, and each workload with an admin port is scraped by one."""
    monitors = list(by_kind.get("PodMonitoring", {}).values())
    for m in monitors:
        where = name_of(m)
        labels = m.get("spec", {}).get("selector", {}).get("matchLabels", {})
        targets = [w for w in workloads
                   if labels and labels.items() <= w["spec"]["template"]["metadata"].get("labels", {}).items()]
        if not targets:
            ck.fail(where, f"selects no workload's pods ({labels})")
        for e in m.get("spec", {}).get("endpoints", []):
            if e.get("port") != "admin" or e.get("path", "/metrics") != "/metrics":
                ck.fail(where, "must scrape the admin port's /metrics")
    for w in workloads:
        ports = [p.get("name") for c in pod_spec(w).get("containers", []) for p in c.get("ports", [])]
        pod_labels = w["spec"]["template"]["metadata"].get("labels", {}).items()
        if "admin" in ports and not any(
                m.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= pod_labels
                for m in monitors):
            ck.fail(name_of(w), "no PodMonitoring scrapes its admin port (GKE Managed Prometheus reads no annotations)")


def check_rule_object(ck, doc, where):
    """A rule object must carry exactly the groups of k8s/monitoring/rules.yaml."""
    expected = yaml.safe_load(open(RULES_FILE))["groups"]
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(doc.get("spec", {})) != {"groups"}:
        ck.fail(where, "a rule object has apiVersion, kind, metadata and spec.groups only")
    elif doc["spec"]["groups"] != expected:
        ck.fail(where, "its groups differ from k8s/monitoring/rules.yaml: run k8s/monitoring/render")


def duration_s(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text).strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def env_names_from_help(path):
    # `[env: NAME=value]`, or `[env: NAME]` when the value is hidden (secrets).
    return set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", open(path).read()))


def env_names_from_api_md(path, heading):
    """Backticked UPPER_CASE names in the section of API.md under `heading`
    (a line prefix), up to the next heading of any level."""
    names, inside = set(), False
    for line in open(path):
        if line.startswith("#"):
            if inside:
                break
            inside = line.startswith(heading)
            continue
        if inside:
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*_[A-Z0-9_]+)`", line))
    return names


class Checker:
    def __init__(self, version):
        self.version = version
        self.problems = []

    def fail(self, where, msg):
        self.problems.append(f"{where}: {msg}")

    def validate_core(self, doc, where):
        try:
            kubernetes_validate.validate(doc, self.version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            self.fail(where, f"{e.message} (at {path or '/'})")
        except kubernetes_validate.SchemaNotFoundError as e:
            self.fail(where, f"no schema: {e}")
        except kubernetes_validate.InvalidSchemaError as e:
            self.fail(where, f"invalid schema: {e}")


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_spec(doc):
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def container_env(container, configmaps):
    """Variable name → value (None when it comes from a Secret or a field)."""
    env = {}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef", {}).get("name")
        if ref is not None:
            env.update(configmaps.get(ref, {}))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value")
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered", nargs="+", help="files written by kubectl kustomize")
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("--crds", required=True, help="write the custom resources here (JSON)")
    ap.add_argument("--help-env", action="append", default=[], metavar="BINARY=FILE",
                    help="a binary's --help output")
    ap.add_argument("--api-md", required=True)
    ap.add_argument("--reserved", action="append", default=[], metavar="BINARY=NAME",
                    help="a variable the binary will read that API.md does not list")
    ap.add_argument("--expect", choices=["staging", "prod", "loadtest"], required=True)
    args = ap.parse_args()

    ck = Checker(args.kubernetes_version)
    docs = []
    for path in args.rendered:
        for d in yaml.safe_load_all(open(path)):
            if d:
                docs.append(d)
    crds = []
    for d in docs:
        where = name_of(d)
        if (d.get("apiVersion"), d.get("kind")) in RULE_KINDS:
            check_rule_object(ck, d, where)
        elif (d.get("apiVersion"), d.get("kind")) in SCRAPE_KINDS:
            pass  # checked below, against the workloads
        elif str(d.get("apiVersion", "")).startswith(CRD_GROUPS):
            crds.append(d)
        else:
            ck.validate_core(d, where)
    json.dump(crds, open(args.crds, "w"))

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), {})[d["metadata"]["name"]] = d
    configmaps = {n: d.get("data", {}) for n, d in by_kind.get("ConfigMap", {}).items()}

    # Which variables each binary may be given.
    reads = {}
    for spec in args.help_env:
        binary, path = spec.split("=", 1)
        # RUST_LOG is read by the log filter, not a flag, so --help lacks it.
        reads[binary] = env_names_from_help(path) | {"RUST_LOG"}
    telemetry = env_names_from_api_md(args.api_md, "### Telemetry")
    reserved = {
        "tracking-api": env_names_from_api_md(args.api_md, "## tracking-api") | telemetry,
        "migration-proxy": env_names_from_api_md(args.api_md, "## migration-proxy") | telemetry,
    }
    for spec in args.reserved:
        binary, var = spec.split("=", 1)
        reserved.setdefault(binary, set()).add(var)
    not_read_yet = set()
    workloads = list(by_kind.get("Rollout", {}).values()) + list(by_kind.get("Deployment", {}).values())
    for w in workloads:
        spec = pod_spec(w)
        if w["kind"] == "Rollout":
            # The Rollout's pod template, strictly, as the core type it is.
            ck.validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                              "metadata": {"name": w["metadata"]["name"]},
                              "template": w["spec"]["template"]},
                             f"{name_of(w)} pod template")
        for c in spec.get("containers", []):
            where = f"{name_of(w)} container {c['name']}"
            image = c.get("image", "")
            if "/" not in image or ":" not in image.rsplit("/", 1)[-1]:
                ck.fail(where, f"image {image!r} was not set by the overlay (registry/name:tag)")
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                if ref is not None and ref not in configmaps:
                    ck.fail(where, f"envFrom ConfigMap {ref} is not among the rendered ConfigMaps")
            binary = c["name"]
            allowed = reads.get(binary, set()) | reserved.get(binary, set())
            for var in container_env(c, configmaps):
                if var not in allowed:
                    ck.fail(where, f"environment variable {var} is read by neither `{binary} --help` nor API.md")
                elif var not in reads.get(binary, set()):
                    not_read_yet.add(f"{binary}: {var}")


    check_admin_ports(ck, workloads, by_kind, configmaps)

    rollout = by_kind.get("Rollout", {}).get("tracking-api")
    if args.expect in ("staging", "prod"):
        if rollout is None:
            ck.fail("Rollout/tracking-api", "missing")
        else:
            check_rollout(ck, rollout, by_kind, configmaps, args.expect)
    if args.expect == "loadtest":
        check_loadtest(ck, by_kind, configmaps)
    if args.expect == "prod" and "Rules" not in by_kind:
        ck.fail("Rules/tracking", "the prod overlay must deploy the alerting rules (monitoring-rules.yaml)")
    if args.expect == "prod":
        check_scrape_objects(ck, by_kind, workloads)

    for line in sorted(not_read_yet):
        print(f"  note: {line} is not read by this build (API.md: a part not built yet)")
    if ck.problems:
        for p in ck.problems:
            print(f"  FAIL {p}")
        sys.exit(1)
    print(f"  core kinds valid (strict, Kubernetes {args.kubernetes_version}); "
          f"{len(crds)} custom resources for the CRD check; project rules hold")


def check_rollout(ck, rollout, by_kind, configmaps, overlay):
    where = "Rollout/tracking-api"
    spec = pod_spec(rollout)
    c = spec["containers"][0]
    env = container_env(c, configmaps)
    # Drain budget.
    try:
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    except KeyError:
        ck.fail(where, "no preStop sleep action")
        pre_stop = 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    need = (pre_stop + duration_s(env.get("TRACKING_SHUTDOWN_DELAY", "0s"))
            + duration_s(env.get("TRACKING_DRAIN_TIMEOUT", "25s"))
            + duration_s(env.get("TRACKING_PUBSUB_FLUSH_TIMEOUT", "5s")) + 5)
    if grace <= need:
        ck.fail(where, f"terminationGracePeriodSeconds {grace} must exceed preStop + shutdown delay "
                       f"+ drain + flush + 5s = {need:g}s")
    proxy = yaml.safe_load(rollout["spec"]["template"]["metadata"].get("annotations", {})
                           .get("proxy.istio.io/config", "") or "{}") or {}
    drain = proxy.get("terminationDrainDuration")
    serving = pre_stop + duration_s(env.get("TRACKING_SHUTDOWN_DELAY", "0s")) \
        + duration_s(env.get("TRACKING_DRAIN_TIMEOUT", "25s"))
    if drain is None or not (serving <= duration_s(drain) < grace):
        ck.fail(where, f"the sidecar's terminationDrainDuration ({drain}) must cover preStop + shutdown "
                       f"delay + drain ({serving:g}s) and end before the grace period ({grace}s)")
    # Probes and workers.
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        ck.fail(where, "liveness must probe /healthz (which never touches a backend)")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        ck.fail(where, "readiness must probe /readyz")
    workers = [e for e in c.get("env", []) if e["name"] == "TRACKING_WORKER_THREADS"]
    if not workers or workers[0].get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") != "requests.cpu":
        ck.fail(where, "TRACKING_WORKER_THREADS must follow requests.cpu")
    keys = [k for t in spec.get("topologySpreadConstraints", []) for k in t.get("matchLabelKeys", [])]
    if "rollouts-pod-template-hash" not in keys:
        ck.fail(where, "topology spread must use matchLabelKeys: [rollouts-pod-template-hash]")
    # Autoscaling and disruption.
    hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                                               "name": "tracking-api"}]
    if not hpas:
        ck.fail(where, "no HorizontalPodAutoscaler targets the Rollout")
    elif "stabilizationWindowSeconds" not in hpas[0]["spec"].get("behavior", {}).get("scaleDown", {}):
        ck.fail(where, "the HPA has no scale-down stabilisation")
    labels = rollout["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
            if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
    if not pdbs:
        ck.fail(where, "no PodDisruptionBudget selects its pods")
    sa = by_kind.get("ServiceAccount", {}).get(spec.get("serviceAccountName"), {})
    if "iam.gke.io/gcp-service-account" not in sa.get("metadata", {}).get("annotations", {}):
        ck.fail(where, "its ServiceAccount has no Workload Identity annotation")
    for key in ("TRACKING_SESSION_STORE", "TRACKING_SINK", "TRACKING_MIGRATION_MODE"):
        if key not in env:
            ck.fail(where, f"{key} is not set")
    if overlay == "prod":
        for key, want in (("TRACKING_SESSION_STORE", "bigtable"), ("TRACKING_SINK", "pubsub")):
            if env.get(key) != want:
                ck.fail(where, f"prod must set {key}={want}, not {env.get(key)}")
    if env.get("TRACKING_SINK") == "pubsub":
        spool = env.get("TRACKING_SPOOL_DIR")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        vol = volumes.get(mounts.get(spool, ""), {})
        if not spool or "sizeLimit" not in vol.get("emptyDir", {}):
            ck.fail(where, f"TRACKING_SPOOL_DIR ({spool}) must be an emptyDir with a sizeLimit")


ADMIN_ENV = {"tracking-api": "TRACKING_ADMIN_LISTEN", "migration-proxy": "MIGRATION_ADMIN_LISTEN"}


def check_admin_ports(ck, workloads, by_kind, configmaps):
    """Operator endpoints stay off the public path: probes and scrapes on the
    `admin` container port, no Service targeting it, public routes `/v1/` only."""
    admin_ports = {}  # workload labels -> set of (name, number)
    for w in workloads:
        spec = pod_spec(w)
        for c in spec.get("containers", []):
            var = ADMIN_ENV.get(c["name"])
            if var is None:
                continue
            where = f"{name_of(w)} container {c['name']}"
            admin = [p for p in c.get("ports", []) if p.get("name") == "admin"]
            if not admin:
                ck.fail(where, "no container port named admin (its /metrics and probes)")
                continue
            number = admin[0]["containerPort"]
            listen = container_env(c, configmaps).get(var) or ""
            if listen != f"0.0.0.0:{number}":
                ck.fail(where, f"{var} must be 0.0.0.0:{number} (the admin port, reachable by the "
                               f"kubelet and Prometheus), not {listen!r}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ("admin", number):
                    ck.fail(where, f"{probe} must use the admin port, not {port}")
            annotations = w["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/port") != str(number):
                ck.fail(where, f"prometheus.io/port must be the admin port {number}")
            labels = w["spec"]["template"]["metadata"].get("labels", {})
            admin_ports.setdefault(tuple(sorted(labels.items())), set()).update({"admin", number})
    for svc in by_kind.get("Service", {}).values():
        selector = svc.get("spec", {}).get("selector") or {}
        for labels, ports in admin_ports.items():
            if not selector or not all(dict(labels).get(k) == v for k, v in selector.items()):
                continue
            for p in svc["spec"].get("ports", []):
                if p.get("targetPort", p.get("port")) in ports:
                    ck.fail(name_of(svc), f"exposes the admin port ({p.get('targetPort')}): "
                                          "/metrics must not be reachable through a Service")
    public = {g["metadata"]["name"] for g in by_kind.get("Gateway", {}).values()
              if g.get("spec", {}).get("selector", {}).get("istio") == "ingressgateway"}
    for vs in by_kind.get("VirtualService", {}).values():
        if not public & set(vs.get("spec", {}).get("gateways", [])):
            continue
        for route in vs["spec"].get("http", []):
            matches = route.get("match") or [{}]
            for m in matches:
                prefix = m.get("uri", {}).get("prefix", "")
                if not prefix.startswith("/v1/"):
                    ck.fail(name_of(vs), f"route {route.get('name')} on the public gateway must match "
                                         f"only uri prefix /v1/, not {m or 'everything'}")


def check_loadtest(ck, by_kind, configmaps):
    job = by_kind.get("Job", {}).get("loadtest")
    if job is None:
        ck.fail("Job/loadtest", "missing")
        return
    spec = job["spec"]
    where = "Job/loadtest"
    if spec.get("completionMode") != "Indexed" or spec.get("completions") != spec.get("parallelism"):
        ck.fail(where, "must be an Indexed Job with completions = parallelism")
    c = pod_spec(job)["containers"][0]
    env = container_env(c, configmaps)
    try:
        total, per_pod = float(env["LOADTEST_TOTAL_RATE"]), float(env["PER_POD_RATE"])
        if per_pod * spec["parallelism"] != total:
            ck.fail(where, f"PER_POD_RATE {per_pod:g} × parallelism {spec['parallelism']} "
                           f"≠ LOADTEST_TOTAL_RATE {total:g}")
    except (KeyError, ValueError) as e:
        ck.fail(where, f"rates not set: {e}")
    anti = pod_spec(job).get("affinity", {}).get("podAntiAffinity", {})
    required = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    if not any(t.get("labelSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "loadtest"
               and t.get("topologyKey") == "kubernetes.io/hostname" for t in required):
        ck.fail(where, "generators need required anti-affinity among themselves per node")
    merge = by_kind.get("Job", {}).get("loadtest-merge")
    if merge is not None:
        reports = [a for a in pod_spec(merge)["containers"][0]["args"] if a.startswith("/reports/loadtest-")]
        if len(reports) != spec["completions"]:
            ck.fail("Job/loadtest-merge", f"merges {len(reports)} reports, the Job writes {spec['completions']}")


if __name__ == "__main__":
    main()
