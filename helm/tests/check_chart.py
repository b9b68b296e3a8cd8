#!/usr/bin/env python3
"""Renders, lints and validates the vidcascade chart offline, in every configuration CI covers.

For each configuration (default, GPU, KEDA, HPA, TLS with API keys, DNS discovery, custom
stages from an image volume): `helm lint --strict` against Kubernetes 1.30 and the newest
version kubernetes-validate bundles, a dry-run render (the Helm SDK from PyPI,
`helm-python-sdk`), every rendered manifest validated with `kubernetes-validate --strict` against
both versions (CRDs such as KEDA's ScaledObject have no bundled schema and are checked by shape
here instead), and the chart's own promises:

- every stage gets a Deployment, a headless Service, an autoscaler and a PodDisruptionBudget;
- probes ask grpc.health.v1 on the gRPC port (the metrics port's /readyz with TLS on);
- the gateway's --encoder and --stage targets name the encoder's and stages' Services;
- pods run as non-root with a read-only root filesystem, and drain longer than a generation.

Usage: python3 helm/tests/check_chart.py   (pip install helm-python-sdk==0.2.2 kubernetes-validate)
"""

import copy
import sys
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent.parent / "vidcascade"
RELEASE, NAMESPACE = "vc", "video"
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Image volumes (the model as an OCI image) exist from Kubernetes 1.31 (ImageVolume; beta, on
# by default, from 1.33): that configuration is checked against 1.33 and the newest instead.
MIN_VERSION = {"image-volume": "1.33.0"}
CRDS = {"ScaledObject", "ServiceMonitor"}

GPU = {
    "stageDefaults": {
        "image": {"name": "vidcascade-stage-cuda"},
        "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "encoder": {"image": {"name": "vidcascade-text-encoder-cuda"}},
}

CONFIGURATIONS = {
    "default": {},
    "gpu": GPU,
    "keda": {"autoscaling": {"engine": "keda"}, "serviceMonitor": {"enabled": True}},
    "hpa": {"autoscaling": {"engine": "hpa"}},
    "tls": {
        "tls": {"enabled": True, "serverName": "vidcascade.internal"},
        "apiKeys": {"secretName": "vidcascade-api-keys", "rateLimitPerMinute": 60},
    },
    "dns": {"gateway": {"discovery": "dns"}, "networkPolicy": {"enabled": False}},
    "image-volume": {"model": {"source": "image"}},
    "custom-stages": {
        "model": {"name": "big", "pvc": {"claimName": "big-models", "subPath": ""}},
        "stages": [
            {"name": "base", "maxBatchSize": 8},
            {"name": "tsr1", "autoscaling": {"maxReplicas": 3}},
            {"name": "ssr1", "pdb": {"enabled": False}, "autoscaling": {"enabled": False}, "replicas": 2},
            {"name": "ssr2", "resources": {"limits": {"nvidia.com/gpu": 1}}},
        ],
    },
}


def render(values):
    config = helm_python.Config(storage_driver="memory", namespace=NAMESPACE)
    # A client-side dry run renders for Helm's default Kubernetes version.
    release = config.install(str(CHART), RELEASE, values, dry_run="client", namespace=NAMESPACE)
    return [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]


def versions(name):
    return [MIN_VERSION[name], KUBE_VERSIONS[-1]] if name in MIN_VERSION else KUBE_VERSIONS


def lint(values, kube_versions):
    for version in kube_versions:
        result = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=version)
        # Helm's severities: 1 info ("icon is recommended"), 2 warning, 3 error; --strict fails on
        # warnings, so do we.
        messages = [m for m in result.get("messages", []) if m.get("severity", 0) >= 2]
        errors = result.get("errors") or []
        if errors or messages:
            raise AssertionError(f"helm lint --strict (Kubernetes {version}): {errors} {messages}")


def validate(docs, kube_versions):
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CRDS:
            assert doc["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1"), where
            continue
        for version in kube_versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{where} (Kubernetes {version}): {err.message}") from err


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def check_promises(name, values, docs):
    merged = merged_values(values)
    full = f"{RELEASE}-vidcascade"
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    autoscalers = {**by_kind(docs, "ScaledObject"), **by_kind(docs, "HorizontalPodAutoscaler")}
    gateway_args = container(deployments[f"{full}-gateway"])["args"]
    for stage in merged["stages"]:
        stage_values = merge(merged["stageDefaults"], stage)
        resource = f"{full}-stage-{stage['name']}"
        assert resource in deployments, f"{name}: no Deployment {resource}"
        assert services[resource]["spec"]["clusterIP"] == "None", f"{name}: {resource} not headless"
        assert (resource in autoscalers) == stage_values["autoscaling"]["enabled"], f"{name}: autoscaler of {resource}"
        assert (resource in pdbs) == stage_values["pdb"]["enabled"], f"{name}: PDB of {resource}"
        if resource in autoscalers and merged["autoscaling"]["engine"] == "keda":
            trigger = autoscalers[resource]["spec"]["triggers"][0]
            assert f'stage="{stage["name"]}"' in trigger["metadata"]["query"], trigger
        args = container(deployments[resource])["args"]
        assert f"--stage={stage['name']}" in args, args
        assert f"--max-batch-size={stage_values['maxBatchSize']}" in args, args
        target = [a for a in gateway_args if a.startswith(f"--stage={stage['name']}=")]
        assert len(target) == 1 and resource in target[0], f"{name}: gateway target {target}"
        assert f"{resource}.{NAMESPACE}" in target[0], target
    encoder = [a for a in gateway_args if a.startswith("--encoder=")]
    assert len(encoder) == 1 and f"{full}-encoder.{NAMESPACE}" in encoder[0], encoder
    for deployment in deployments.values():
        check_pod(name, merged, deployment)


def check_pod(name, merged, deployment):
    pod = deployment["spec"]["template"]["spec"]
    main = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = main[probe]
        if merged["tls"]["enabled"]:
            assert spec["httpGet"]["port"] == "metrics", spec
        else:
            assert spec["grpc"]["port"] == ports["grpc"] == merged["ports"]["grpc"], spec
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    drain = next(int(a.split("=")[1]) for a in main["args"] if a.startswith("--drain-grace-seconds="))
    assert pod["terminationGracePeriodSeconds"] > drain >= merged["maxGenerationSeconds"], name
    if main["name"] in ("stage", "encoder"):
        threads = {e["name"]: e["value"] for e in main.get("env", [])}.get("RAYON_NUM_THREADS")
        assert threads is not None and int(threads) >= 1, f"{name}: {main['name']} has no thread count"
    gpus = main["resources"].get("limits", {}).get("nvidia.com/gpu")
    if name == "gpu" and main["name"] == "stage":
        assert gpus == 1, main["resources"]


def merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged_values(values):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, values)


def main():
    failures = []
    for name, values in CONFIGURATIONS.items():
        try:
            lint(values, versions(name))
            docs = render(values)
            validate(docs, versions(name))
            check_promises(name, values, docs)
            kinds = sorted({d["kind"] for d in docs})
            print(f"ok   {name}: {len(docs)} manifests ({', '.join(kinds)})")
        except (AssertionError, helm_python.HelmError) as err:
            failures.append(name)
            print(f"FAIL {name}: {err}")
    if failures:
        print(f"chart: {len(failures)} configuration(s) failed: {', '.join(failures)}")
        return 1
    print(f"chart: ok ({len(CONFIGURATIONS)} configurations, Kubernetes {' and '.join(KUBE_VERSIONS)};"
          f" image volumes {MIN_VERSION['image-volume']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
