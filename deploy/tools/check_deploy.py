#!/usr/bin/env python3
"""Offline checks of everything under deploy/ (run by scripts/check-deploy).

1. Every YAML and JSON file parses.
2. compose.yaml: `docker compose config` where the compose plugin works; always a structural check
   (images/builds, depends_on, bind-mounted files, named volumes, build context and Dockerfile).
3. Dockerfile: stages and `--from` references resolve, every runtime-${VARIANT} stage exists.
4. Prometheus: scrape config and rule files, each rule complete, PromQL brackets balanced, every
   tutti_* name is a constant of shared/src/metrics.rs (tests/deploy_manifests.rs checks the
   same from Rust).
5. Grafana: dashboard panels (unique ids, no overlaps, every target has an expression, metric
   names as above) and provisioning.
6. Kubernetes: builds base, overlays/cpu and overlays/gpu with a small kustomize equivalent
   (resources, namespace, images, strategic-merge patches by path; anything else is refused), and
   compares it with `kubectl kustomize` when kubectl is installed; validates every built object
   with kubernetes-validate (strict, offline schemas) and the KEDA objects with a hand-written
   JSON schema of the fields used here; then cross-references (ConfigMaps, PVCs, Services and
   PDBs select real pods, probe ports exist, ScaledObjects target real Deployments with the
   queue of their stage, the GPU overlay asks for nvidia.com/gpu).
Exits 1 on any failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = os.environ.get("KUBERNETES_VERSION", "1.32.0")

failures: list[str] = []
notes: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def skip(msg: str) -> None:
    notes.append(msg)
    print(f"  skip {msg}")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# 1. parse everything
# ---------------------------------------------------------------------------------------------

def parse_all() -> None:
    print("parse: YAML and JSON under deploy/")
    n = 0
    for p in sorted(DEPLOY.rglob("*")):
        if not p.is_file():
            continue
        try:
            if p.suffix in (".yaml", ".yml"):
                list(yaml.safe_load_all(p.read_text()))
                n += 1
            elif p.suffix == ".json":
                json.loads(p.read_text())
                n += 1
        except Exception as e:  # noqa: BLE001
            fail(f"{rel(p)}: {e}")
    ok(f"{n} files parse")


def load_yaml(p: Path):
    return yaml.safe_load(p.read_text())


# ---------------------------------------------------------------------------------------------
# metric names the code exports
# ---------------------------------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    src = (ROOT / "shared/src/metrics.rs").read_text()
    names = set(re.findall(r'pub const [A-Z0-9_]+: &str = "(tutti_[a-z0-9_]+)"', src))
    if not names:
        fail("no metric names found in shared/src/metrics.rs")
    else:
        print(f"metrics: {len(names)} names exported by shared/src/metrics.rs")
    return names


METRIC_RE = re.compile(r"(?<![A-Za-z0-9_])tutti_[a-z0-9_]+")


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_names(where: str, exprs: list[str], known: set[str]) -> None:
    used = {base_metric(m) for e in exprs for m in METRIC_RE.findall(e)}
    unknown = sorted(used - known)
    if unknown:
        fail(f"{where}: metric names the code does not export: {', '.join(unknown)}")
    else:
        ok(f"{where}: {len(used)} tutti_* metric names, all exported by shared/src/metrics.rs")


def brackets_balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_str = None
    for c in expr:
        if in_str:
            if c == in_str:
                in_str = None
            continue
        if c in "\"'`":
            in_str = c
        elif c in "([{":
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                return False
    return not stack and in_str is None


# ---------------------------------------------------------------------------------------------
# 2. compose
# ---------------------------------------------------------------------------------------------

def check_compose() -> None:
    print("compose: deploy/compose.yaml")
    path = DEPLOY / "compose.yaml"
    before = len(failures)
    docker = shutil.which("docker")
    works = False
    if docker:
        r = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        works = r.returncode == 0
    if works:
        r = subprocess.run([docker, "compose", "-f", str(path), "config", "--quiet"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"docker compose config: {r.stderr.strip()}")
        else:
            ok("docker compose config")
    else:
        skip("docker compose config: the compose plugin is not available on this machine")

    doc = load_yaml(path)
    services = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            fail(f"compose service {name}: neither image nor build")
        build = svc.get("build")
        if isinstance(build, dict):
            ctx = (path.parent / build.get("context", ".")).resolve()
            if not ctx.is_dir():
                fail(f"compose service {name}: build context {ctx} missing")
            df = ctx / build.get("dockerfile", "Dockerfile")
            if not df.is_file():
                fail(f"compose service {name}: Dockerfile {df} missing")
        deps = svc.get("depends_on") or {}
        for d in (deps if isinstance(deps, (list, dict)) else []):
            if d not in services:
                fail(f"compose service {name}: depends_on unknown service {d}")
        for v in svc.get("volumes") or []:
            if not isinstance(v, str):
                continue
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                target = (path.parent / src).resolve()
                # A missing directory is created by Docker; a config file must exist.
                if Path(src).suffix and not target.exists():
                    fail(f"compose service {name}: bind-mounted file {src} missing")
            elif src not in volumes:
                fail(f"compose service {name}: named volume {src} not declared")
    expected = {"postgres", "rabbitmq", "s3", "coordinator", "worker-denoise", "worker-vocode",
                "otel-collector", "prometheus", "grafana"}
    missing = expected - set(services)
    if missing:
        fail(f"compose: services missing: {sorted(missing)}")
    for w, stage in (("worker-denoise", "denoise"), ("worker-vocode", "vocode")):
        cmd = services.get(w, {}).get("command", [])
        if cmd[:1] != ["worker"] or stage not in cmd:
            fail(f"compose service {w}: command {cmd} does not run `worker --stages {stage}`")
    if len(failures) == before:
        ok(f"structure: {len(services)} services, builds, depends_on, mounts and volumes resolve")


# ---------------------------------------------------------------------------------------------
# 3. Dockerfile
# ---------------------------------------------------------------------------------------------

def check_dockerfile() -> None:
    print("docker: deploy/docker/Dockerfile")
    path = DEPLOY / "docker/Dockerfile"
    text = path.read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: list[str] = []
    args_global: dict[str, str] = {}
    seen_from = False
    known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
             "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
    before = len(failures)
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr not in known:
            fail(f"Dockerfile: unknown instruction {instr}")
            continue
        if instr == "ARG" and not seen_from:
            k, _, v = rest.partition("=")
            args_global[k.strip()] = v.strip()
        if instr == "FROM":
            seen_from = True
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            image, name = m.group(1), m.group(2)
            if "${VARIANT}" in image:
                variants = ("cpu", "cuda")
                for v in variants:
                    if image.replace("${VARIANT}", v) not in stages:
                        fail(f"Dockerfile: FROM {image}: no stage {image.replace('${VARIANT}', v)}")
            elif "$" in image:
                var = re.search(r"\$\{?(\w+)", image).group(1)
                if var not in args_global:
                    fail(f"Dockerfile: FROM {image}: ARG {var} not declared before the first FROM")
            if name:
                stages.append(name)
        if instr == "COPY":
            m = re.search(r"--from=(\S+)", rest)
            if m and m.group(1) not in stages:
                fail(f"Dockerfile: COPY --from={m.group(1)}: no such stage")
    if args_global.get("VARIANT") != "cpu":
        fail("Dockerfile: ARG VARIANT should default to cpu")
    if "torch==${TORCH_VERSION}" not in text or "ARG TORCH_VERSION=2.11.0" not in text:
        fail("Dockerfile: torch is not pinned to 2.11.0")
    if "LIBTORCH_USE_PYTORCH=1" not in text:
        fail("Dockerfile: LIBTORCH_USE_PYTORCH=1 missing")
    if len(failures) == before:
        ok(f"stages {stages} and references resolve; torch pinned; VARIANT=cpu|cuda")
    skip("docker build: no Docker daemon here (and no network from the build to PyPI/crates.io)")


# ---------------------------------------------------------------------------------------------
# 4. Prometheus
# ---------------------------------------------------------------------------------------------

def check_prometheus(known: set[str]) -> None:
    print("prometheus: scrape config and alert rules")
    before = len(failures)
    cfg = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    for rf in cfg.get("rule_files", []):
        local = DEPLOY / "prometheus" / Path(rf).name
        if not local.is_file():
            fail(f"prometheus.yml: rule file {rf} has no counterpart {rel(local)}")
    jobs = [j["job_name"] for j in cfg.get("scrape_configs", [])]
    if len(jobs) != len(set(jobs)):
        fail("prometheus.yml: duplicate job names")
    for want in ("tutti-coordinator", "tutti-worker-denoise", "tutti-worker-vocode"):
        if want not in jobs:
            fail(f"prometheus.yml: no scrape job {want}")
    k8s = load_yaml(DEPLOY / "prometheus/kubernetes-scrape.yaml")
    if not k8s.get("scrape_configs"):
        fail("kubernetes-scrape.yaml: no scrape_configs")

    rules = load_yaml(DEPLOY / "prometheus/alerts.yaml")
    exprs = []
    names = set()
    for g in rules.get("groups", []):
        if not g.get("name"):
            fail("alerts.yaml: a group without a name")
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            if not name:
                fail("alerts.yaml: a rule with neither alert nor record")
                continue
            if name in names:
                fail(f"alerts.yaml: duplicate alert {name}")
            names.add(name)
            expr = r.get("expr", "")
            if not isinstance(expr, str) or not expr.strip():
                fail(f"alerts.yaml: {name}: no expr")
                continue
            if not brackets_balanced(expr):
                fail(f"alerts.yaml: {name}: unbalanced brackets in expr")
            if "alert" in r:
                if (r.get("labels") or {}).get("severity") not in ("info", "warning", "critical"):
                    fail(f"alerts.yaml: {name}: labels.severity must be info|warning|critical")
                if not (r.get("annotations") or {}).get("summary"):
                    fail(f"alerts.yaml: {name}: annotations.summary missing")
                if "for" in r and not re.fullmatch(r"\d+[smhd]", str(r["for"])):
                    fail(f"alerts.yaml: {name}: bad duration for: {r['for']}")
            exprs.append(expr)
    if len(failures) == before:
        ok(f"{len(names)} alert rules complete ({', '.join(sorted(names))})")
    check_names("alerts.yaml", exprs, known)
    for must in ("tutti_backlog", "tutti_jobs_finished_total", "tutti_dead_letters_total",
                 "tutti_ready"):
        if not any(must in e for e in exprs):
            fail(f"alerts.yaml: no rule uses {must}")
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus/alerts.yaml")],
                           capture_output=True, text=True)
        (ok if r.returncode == 0 else fail)(f"promtool check rules: {r.stdout.strip()} {r.stderr.strip()}")
    else:
        skip("promtool check rules: promtool not installed (PromQL is not parsed, only bracket-checked)")


# ---------------------------------------------------------------------------------------------
# 5. Grafana
# ---------------------------------------------------------------------------------------------

def check_grafana(known: set[str]) -> None:
    print("grafana: dashboard and provisioning")
    before = len(failures)
    dash = json.loads((DEPLOY / "grafana/tutti.json").read_text())
    for k in ("uid", "title", "panels", "schemaVersion"):
        if k not in dash:
            fail(f"tutti.json: no {k}")
    ids = set()
    cells: dict[tuple[int, int], int] = {}
    exprs = []
    for p in dash.get("panels", []):
        pid = p.get("id")
        if pid in ids:
            fail(f"tutti.json: duplicate panel id {pid}")
        ids.add(pid)
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            fail(f"tutti.json: panel {pid} wider than the grid")
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells:
                    fail(f"tutti.json: panels {cells[(x, y)]} and {pid} overlap")
                    break
                cells[(x, y)] = pid
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            fail(f"tutti.json: panel {pid} ({p.get('title')}) has no targets")
        for t in p.get("targets", []):
            e = t.get("expr", "")
            if not e.strip():
                fail(f"tutti.json: panel {pid} has a target without expr")
            elif not brackets_balanced(e):
                fail(f"tutti.json: panel {pid}: unbalanced brackets: {e}")
            exprs.append(e)
    if len(failures) == before:
        ok(f"{len(ids)} panels, unique ids, no overlaps, {len(exprs)} queries")
    check_names("grafana/tutti.json", exprs, known)
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    if not any(d.get("type") == "prometheus" for d in ds.get("datasources", [])):
        fail("grafana provisioning: no prometheus datasource")
    prov = load_yaml(DEPLOY / "grafana/provisioning/dashboards/tutti.yaml")
    if not prov.get("providers"):
        fail("grafana provisioning: no dashboard provider")
    compose = load_yaml(DEPLOY / "compose.yaml")
    mounts = compose["services"]["grafana"].get("volumes", [])
    path = prov["providers"][0]["options"]["path"]
    if not any(isinstance(m, str) and m.split(":")[1].startswith(path) and "tutti.json" in m
               for m in mounts):
        fail(f"grafana: the dashboard is not mounted under the provider path {path}")
    else:
        ok("provisioning: datasource and dashboard provider, dashboard mounted where provided")


# ---------------------------------------------------------------------------------------------
# 6. Kubernetes: a small kustomize
# ---------------------------------------------------------------------------------------------

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "ClusterTriggerAuthentication"}
# Strategic-merge keys of the built-in lists these manifests patch (k8s.io/api patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "env": "name", "volumes": "name", "volumeMounts": "mountPath",
              "ports": "containerPort", "imagePullSecrets": "name"}


class KustomizeError(Exception):
    pass


def is_builtin(obj: dict) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def smp(base, patch, builtin: bool, key: str | None = None):
    """Strategic merge of `patch` into `base` (dicts merge, null deletes, lists with a merge key
    merge by it on built-in kinds, other lists are replaced)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "$patch" in patch or any(k.startswith("$") for k in patch):
            raise KustomizeError(f"strategic-merge directives are not supported: {list(patch)}")
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = smp(out[k], v, builtin, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and builtin and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out) if x.get(mk) == item.get(mk)), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = smp(out[idx], item, builtin)
        return out
    return copy.deepcopy(patch)


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def set_images(objs: list[dict], images: list[dict]) -> None:
    for obj in objs:
        spec = pod_spec(obj)
        if not spec:
            continue
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ref = c.get("image", "")
            name = re.split(r"[@]", ref)[0]
            name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
            for im in images:
                if im["name"] == name:
                    new = im.get("newName", name)
                    if "digest" in im:
                        c["image"] = f"{new}@{im['digest']}"
                    elif "newTag" in im:
                        c["image"] = f"{new}:{im['newTag']}"
                    else:
                        tag = ref[len(name):]
                        c["image"] = new + tag


def ident(obj: dict) -> tuple[str, str, str]:
    return (obj["apiVersion"].rpartition("/")[0], obj["kind"], obj["metadata"]["name"])


def build(d: Path) -> list[dict]:
    kfile = d / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{rel(d)}: no kustomization.yaml")
    k = load_yaml(kfile)
    extra = set(k) - SUPPORTED_KEYS
    if extra:
        raise KustomizeError(f"{rel(kfile)}: unsupported fields {sorted(extra)} (keep kustomizations "
                             "to resources, namespace, images and patches by path)")
    objs: list[dict] = []
    for r in k.get("resources", []):
        p = (d / r).resolve()
        if p.is_dir():
            objs.extend(build(p))
        elif p.is_file():
            objs.extend(o for o in yaml.safe_load_all(p.read_text()) if o)
        else:
            raise KustomizeError(f"{rel(kfile)}: resource {r} not found")
    seen = set()
    for o in objs:
        i = ident(o)
        if i in seen:
            raise KustomizeError(f"{rel(kfile)}: duplicate resource {i}")
        seen.add(i)
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise KustomizeError(f"{rel(kfile)}: only `patches: - path: FILE` is supported, got {p}")
        for patch in yaml.safe_load_all((d / p["path"]).read_text()):
            if not patch:
                continue
            hits = [i for i, o in enumerate(objs) if ident(o) == ident(patch)]
            if len(hits) != 1:
                raise KustomizeError(f"{rel(d / p['path'])}: patch target {ident(patch)} matches "
                                     f"{len(hits)} resources")
            objs[hits[0]] = smp(objs[hits[0]], patch, is_builtin(patch))
    if "images" in k:
        set_images(objs, k["images"])
    if "namespace" in k:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objs


def normalise(obj):
    """Order-insensitive form for comparing with kubectl kustomize (list order of merge-keyed
    lists may differ between strategic-merge implementations)."""
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [normalise(x) for x in obj]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    return obj


# ---- KEDA: a hand-written schema of the fields these manifests use (keda.sh/v1alpha1) --------

STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = {"type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": STR_MAP, "annotations": STR_MAP}}
HPA_RULES = {"type": "object", "additionalProperties": False, "properties": {
    "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
    "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
    "policies": {"type": "array", "items": {
        "type": "object", "additionalProperties": False,
        "required": ["type", "value", "periodSeconds"],
        "properties": {"type": {"enum": ["Pods", "Percent"]},
                       "value": {"type": "integer", "minimum": 1},
                       "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}}}}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
            "metadata": META,
            "spec": {
                "type": "object", "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {"type": "object", "additionalProperties": False,
                                       "required": ["name"],
                                       "properties": {"name": {"type": "string"},
                                                      "kind": {"type": "string"},
                                                      "apiVersion": {"type": "string"},
                                                      "envSourceContainerName": {"type": "string"}}},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "advanced": {"type": "object", "additionalProperties": False, "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False, "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object", "additionalProperties": False,
                                             "properties": {"scaleUp": HPA_RULES,
                                                            "scaleDown": HPA_RULES}}}}}},
                    "triggers": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"}, "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            # KEDA's CRD: trigger metadata is a map of strings.
                            "metadata": STR_MAP,
                            "authenticationRef": {"type": "object", "additionalProperties": False,
                                                  "required": ["name"],
                                                  "properties": {"name": {"type": "string"},
                                                                 "kind": {"enum": [
                                                                     "TriggerAuthentication",
                                                                     "ClusterTriggerAuthentication"]}}}}}}}}}},
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
            "metadata": META,
            "spec": {"type": "object", "additionalProperties": False, "properties": {
                "secretTargetRef": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["parameter", "name", "key"],
                    "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                                   "key": {"type": "string"}}}},
                "env": {"type": "array"}}}}},
}
RABBITMQ_METADATA = {"host", "hostFromEnv", "protocol", "mode", "value", "activationValue",
                     "queueName", "vhostName", "useRegex", "excludeUnacknowledged", "operation",
                     "timeout", "unsafeSsl"}


def validate_objects(label: str, objs: list[dict]) -> None:
    import jsonschema
    import kubernetes_validate

    before = len(failures)
    for o in objs:
        kn = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in KEDA_SCHEMAS:
            errs = sorted(jsonschema.Draft202012Validator(KEDA_SCHEMAS[o["kind"]]).iter_errors(o),
                          key=str)
            for e in errs:
                fail(f"{label}: {kn}: {'.'.join(map(str, e.path))}: {e.message}")
            for t in o.get("spec", {}).get("triggers", []):
                if t.get("type") == "rabbitmq":
                    unknown = set(t["metadata"]) - RABBITMQ_METADATA
                    if unknown:
                        fail(f"{label}: {kn}: unknown rabbitmq trigger metadata {sorted(unknown)}")
                    if t["metadata"].get("mode") not in ("QueueLength", "MessageRate"):
                        fail(f"{label}: {kn}: rabbitmq mode must be QueueLength or MessageRate")
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{label}: {kn}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{label}: {kn}: {e.message}")
    if len(failures) == before:
        kinds = sorted({o["kind"] for o in objs})
        ok(f"{label}: {len(objs)} objects valid ({', '.join(kinds)}) "
           f"[kubernetes-validate {K8S_VERSION} strict; KEDA by the built-in subset schema]")


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cross_check(label: str, objs: list[dict]) -> None:
    before = len(failures)
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    deployments = by_kind.get("Deployment", {})
    external_secrets = {"tutti-secrets"}  # created by the operator (secret.example.yaml)
    config = next(iter(by_kind.get("ConfigMap", {}).values()), {}).get("data", {})
    prefix = config.get("TUTTI_QUEUE_PREFIX", "tutti")
    for o in objs:
        spec = pod_spec(o)
        if not spec:
            continue
        kn = f"{o['kind']}/{o['metadata']['name']}"
        tmpl_labels = (o["spec"].get("template", {}).get("metadata", {}).get("labels", {})
                       if o["kind"] != "Pod" else o["metadata"].get("labels", {}))
        sel = o["spec"].get("selector", {}).get("matchLabels")
        if o["kind"] == "Deployment" and not labels_match(sel or {"x": "x"}, tmpl_labels):
            fail(f"{label}: {kn}: selector does not match its pod template")
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                fail(f"{label}: {kn}: PVC {claim} not defined")
        for c in spec["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])}
            for ef in c.get("envFrom", []):
                cm = ef.get("configMapRef", {}).get("name")
                if cm and cm not in by_kind.get("ConfigMap", {}):
                    fail(f"{label}: {kn}: ConfigMap {cm} not defined")
                sec = ef.get("secretRef", {}).get("name")
                if sec and sec not in by_kind.get("Secret", {}) and sec not in external_secrets:
                    fail(f"{label}: {kn}: Secret {sec} neither defined nor documented")
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols:
                    fail(f"{label}: {kn}: volumeMount {m['name']} has no volume")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                pr = c.get(probe)
                if pr and "httpGet" in pr:
                    port = pr["httpGet"]["port"]
                    if isinstance(port, str) and port not in ports:
                        fail(f"{label}: {kn}: {probe} port {port} is not a container port")
            if o["kind"] == "Deployment":
                paths = {c.get(p, {}).get("httpGet", {}).get("path")
                         for p in ("livenessProbe", "readinessProbe")}
                if paths != {"/healthz", "/readyz"}:
                    fail(f"{label}: {kn}: probes should be /healthz (liveness) and /readyz (readiness)")
                if not c.get("resources", {}).get("requests"):
                    fail(f"{label}: {kn}: no resource requests")
            if "image" in c and not re.search(r"[:@]", c["image"].rsplit("/", 1)[-1]):
                fail(f"{label}: {kn}: image {c['image']} has no tag (images transformer missed it?)")
    for kind in ("Service", "PodDisruptionBudget"):
        for name, o in by_kind.get(kind, {}).items():
            sel = o["spec"]["selector"]
            sel = sel.get("matchLabels", sel) if kind == "PodDisruptionBudget" else sel
            if not any(labels_match(sel, d["spec"]["template"]["metadata"]["labels"])
                       for d in deployments.values()):
                fail(f"{label}: {kind}/{name}: selector matches no Deployment's pods")
    for name in deployments:
        if not any(labels_match(p["spec"]["selector"]["matchLabels"],
                                deployments[name]["spec"]["template"]["metadata"]["labels"])
                   for p in by_kind.get("PodDisruptionBudget", {}).values()):
            fail(f"{label}: Deployment/{name}: no PodDisruptionBudget")
    auths = by_kind.get("TriggerAuthentication", {})
    stages_seen = set()
    for name, so in by_kind.get("ScaledObject", {}).items():
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            fail(f"{label}: ScaledObject/{name}: target Deployment {target} not defined")
            continue
        if "replicas" in deployments[target]["spec"]:
            fail(f"{label}: Deployment/{target}: sets replicas although KEDA scales it")
        args = deployments[target]["spec"]["template"]["spec"]["containers"][0].get("args", [])
        stage = args[args.index("--stages") + 1] if "--stages" in args else None
        for t in so["spec"]["triggers"]:
            q = t["metadata"].get("queueName")
            if t["type"] != "rabbitmq" or q != f"{prefix}.{stage}":
                fail(f"{label}: ScaledObject/{name}: trigger {t['type']} queue {q} is not the queue "
                     f"of its pool's stage ({prefix}.{stage})")
            ref = (t.get("authenticationRef") or {}).get("name")
            if ref not in auths:
                fail(f"{label}: ScaledObject/{name}: TriggerAuthentication {ref} not defined")
        stages_seen.add(stage)
    if stages_seen != {"denoise", "vocode"}:
        fail(f"{label}: ScaledObjects cover stages {sorted(map(str, stages_seen))}, want denoise and vocode")
    for name, a in auths.items():
        for ref in a["spec"].get("secretTargetRef", []):
            if ref["name"] not in by_kind.get("Secret", {}) and ref["name"] not in external_secrets:
                fail(f"{label}: TriggerAuthentication/{name}: Secret {ref['name']} unknown")
    if len(failures) == before:
        ok(f"{label}: references resolve (config, PVC, probes, Services, PDBs, KEDA targets and "
           f"queues {prefix}.denoise / {prefix}.vocode)")


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def overlay_checks(label: str, objs: list[dict]) -> None:
    before = len(failures)
    deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    den = deps["tutti-worker-denoise"]["spec"]["template"]["spec"]
    voc = deps["tutti-worker-vocode"]["spec"]["template"]["spec"]
    dc, vc = den["containers"][0], voc["containers"][0]
    if label.endswith("gpu"):
        lim = dc.get("resources", {}).get("limits", {})
        if str(lim.get("nvidia.com/gpu")) != "1":
            fail(f"{label}: denoise workers do not limit nvidia.com/gpu")
        if env_of(dc).get("TUTTI_DEVICE") != "cuda":
            fail(f"{label}: denoise workers do not set TUTTI_DEVICE=cuda")
        if not den.get("tolerations") or not den.get("nodeSelector"):
            fail(f"{label}: denoise workers lack GPU node selector / tolerations")
        if not dc["image"].endswith("cuda"):
            fail(f"{label}: denoise workers do not run the CUDA image ({dc['image']})")
        if "nvidia.com/gpu" in str(vc.get("resources")):
            fail(f"{label}: vocode workers ask for a GPU")
    else:
        for c in (dc, vc):
            if env_of(c).get("TUTTI_DEVICE") != "cpu":
                fail(f"{label}: workers do not set TUTTI_DEVICE=cpu")
        if "nvidia.com/gpu" in json.dumps(objs):
            fail(f"{label}: asks for nvidia.com/gpu")
    if len(failures) == before:
        ok(f"{label}: pool settings ({'GPU denoise, CPU vocode' if label.endswith('gpu') else 'CPU pools'})")


def check_k8s() -> None:
    print(f"kubernetes: kustomize base and overlays, kubernetes-validate (k8s {K8S_VERSION})")
    kubectl = shutil.which("kubectl")
    for d in ("base", "overlays/cpu", "overlays/gpu"):
        label = f"k8s/{d}"
        try:
            objs = build(DEPLOY / "k8s" / d)
        except (KustomizeError, yaml.YAMLError, KeyError) as e:
            fail(f"{label}: build: {e}")
            continue
        ok(f"{label}: built {len(objs)} objects")
        if kubectl:
            r = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / d)],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                fail(f"{label}: kubectl kustomize: {r.stderr.strip()}")
            else:
                theirs = {ident(o): normalise(o) for o in yaml.safe_load_all(r.stdout) if o}
                mine = {ident(o): normalise(o) for o in objs}
                if theirs != mine:
                    diff = sorted(set(theirs) ^ set(mine)) or sorted(
                        k for k in mine if mine[k] != theirs.get(k))
                    fail(f"{label}: the built-in kustomize and `kubectl kustomize` disagree on {diff}")
                else:
                    ok(f"{label}: identical to `kubectl kustomize`")
        validate_objects(label, objs)
        cross_check(label, objs)
        if d.startswith("overlays"):
            overlay_checks(label, objs)
    if not kubectl:
        skip("kubectl kustomize: kubectl not installed (the built-in kustomize equivalent was used)")
    example = [o for o in yaml.safe_load_all((DEPLOY / "k8s/base/secret.example.yaml").read_text()) if o]
    validate_objects("k8s/base/secret.example.yaml", example)


def main() -> int:
    known = exported_metric_names()
    parse_all()
    check_compose()
    check_dockerfile()
    check_prometheus(known)
    check_grafana(known)
    check_k8s()
    print()
    if notes:
        print("not checked here:")
        for n in notes:
            print(f"  - {n}")
    if failures:
        print(f"check-deploy: {len(failures)} failure(s)")
        return 1
    print("check-deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
