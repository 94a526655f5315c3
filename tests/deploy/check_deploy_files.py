#!/usr/bin/python3
"""Checks the files under deploy/ against the real server.

Docker and Kubernetes cannot run here, so this checks what can be checked:
the YAML and JSON parse, the Kubernetes objects have the probes, resources,
volume and budget they need, every IDEM_* variable the files set is one the
server knows (from `idem-server --help`), and every metric the Grafana
dashboard queries is exported by a running idem-server.

Usage: check_deploy_files.py REPO_ROOT IDEM_SERVER_BINARY
"""
import configparser
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


def server_variables(binary):
    out = subprocess.run([binary, "--help"], check=True, capture_output=True,
                         text=True).stdout
    return set(re.findall(r"\((IDEM_[A-Z_]+),", out))


def scrape_metric_names(binary):
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen(
            [binary, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
             "--http-listen=127.0.0.1:0",
             "--data-dir=" + os.path.join(tmp, "data"),
             "--port-file=" + port_file],
            stderr=subprocess.DEVNULL)
        try:
            metrics_port = None
            for _ in range(300):
                if os.path.exists(port_file):
                    for line in open(port_file):
                        if line.startswith("metrics="):
                            metrics_port = int(line.split("=")[1])
                if metrics_port:
                    break
                time.sleep(0.05)
            check(metrics_port, "idem-server did not report a metrics port")
            if not metrics_port:
                return set()
            url = "http://127.0.0.1:%d/metrics" % metrics_port
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def check_workload(path, variables, workload_kind):
    """Checks what every Idem manifest needs: the objects, a non-root pod,
    gRPC probes, resource requests, known variables, a matching Service.
    Returns (workload spec, container, env) for the mode's own checks."""
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {d["kind"]: d for d in docs}
    for kind in ("Service", workload_kind, "PodDisruptionBudget"):
        check(kind in kinds, "%s: no %s" % (path, kind))
    spec = kinds.get(workload_kind, {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    check(pod.get("securityContext", {}).get("runAsNonRoot"),
          "%s: pod must run as non-root" % path)
    container = pod.get("containers", [{}])[0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container.get(probe, {}).get("grpc", {})
        check(grpc.get("port") == ports.get("grpc"),
              "%s: %s must be a gRPC probe on the grpc port" % (path, probe))
    check(container.get("resources", {}).get("requests"),
          "%s: no resource requests" % path)
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    for name in env:
        check(name in variables,
              "%s sets unknown variable %s" % (path, name))
    selector = kinds.get("Service", {}).get("spec", {}).get("selector", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    check(all(labels.get(k) == v for k, v in selector.items()),
          "%s: Service selector does not match the pods" % path)
    # With TLS on, the server keeps checked copies of the TLS files under
    # $TMPDIR: a read-only root file system needs a writable /tmp.
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        tmp = [m for m in container.get("volumeMounts", [])
               if m["mountPath"] == "/tmp"]
        check(tmp and "emptyDir" in volumes.get(tmp[0]["name"], {}),
              "%s: read-only root file system without an emptyDir on /tmp "
              "(TLS needs it)" % path)
    return spec, container, env


def check_kubernetes(path, variables):
    spec, container, env = check_workload(path, variables, "StatefulSet")
    check(spec.get("replicas") == 1,
          "StatefulSet must have exactly 1 replica (RocksDB is single-writer)")
    check(spec.get("volumeClaimTemplates"), "StatefulSet has no volume claim")
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    check(any(env.get("IDEM_DATA_DIR", "").startswith(m) for m in mounts),
          "IDEM_DATA_DIR is not on the mounted volume")


def check_kubernetes_replicas(path, variables):
    spec, container, env = check_workload(path, variables, "Deployment")
    check(spec.get("replicas", 0) >= 2, "%s: replicas should be >= 2" % path)
    check(env.get("IDEM_STORE", "").startswith("redis-cluster://"),
          "%s: IDEM_STORE is not a redis-cluster:// list" % path)
    pod = spec.get("template", {}).get("spec", {})
    check(all("emptyDir" in v for v in pod.get("volumes", [])),
          "%s: stateless replicas need no persistent volume" % path)


def check_dockerfile(path, variables):
    text = open(path).read()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    check(len(stages) >= 2, "Dockerfile must be multi-stage")
    check(all(s.startswith("debian:12") for s in stages),
          "Dockerfile stages must be Debian 12")
    user = re.findall(r"^USER (\S+)", text, re.M)
    check(user and not user[-1].startswith(("root", "0")),
          "Dockerfile must end as a non-root user")
    check(re.search(r"^VOLUME ", text, re.M), "Dockerfile has no data volume")
    for name in re.findall(r"\b(IDEM_[A-Z_]+)=", text):
        check(name in variables, "Dockerfile sets unknown variable %s" % name)


def check_systemd(path, variables):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(path)
    for section in ("Unit", "Service", "Install"):
        check(unit.has_section(section), "%s: no [%s]" % (path, section))
    service = unit["Service"] if unit.has_section("Service") else {}
    check(service.get("ExecStart", "").endswith("idem-server"),
          "systemd unit must run idem-server")
    check(service.get("User") not in (None, "root"),
          "systemd unit must run as a non-root user")
    for name in re.findall(r"^Environment=(IDEM_[A-Z_]+)=", open(path).read(),
                           re.M):
        check(name in variables, "systemd sets unknown variable %s" % name)


def check_dashboard(path, exported):
    dashboard = json.load(open(path))
    queried = set()
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            queried |= set(re.findall(r"\b(idem_[a-z_]+?)(?:_bucket|_sum|_count)?\b",
                                      target["expr"]))
    check(queried, "the dashboard queries no idem metric")
    for name in sorted(queried):
        check(name in exported,
              "dashboard queries %s, which idem-server does not export" % name)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("outcome", "replay", "p99", "waiters", "takeovers", "disk"):
        check(topic in titles, "dashboard has no %s panel" % topic)


def main():
    root, binary = sys.argv[1], sys.argv[2]
    variables = server_variables(binary)
    check(len(variables) > 10, "could not read the server's variables")
    check_kubernetes(os.path.join(root, "deploy/kubernetes/idem.yaml"),
                     variables)
    check_kubernetes_replicas(
        os.path.join(root, "deploy/kubernetes/idem-redis-cluster.yaml"),
        variables)
    check_dockerfile(os.path.join(root, "deploy/Dockerfile"), variables)
    check_systemd(os.path.join(root, "deploy/systemd/idem.service"), variables)
    check_dashboard(os.path.join(root, "deploy/grafana/idem-dashboard.json"),
                    scrape_metric_names(binary))
    for failure in failures:
        print("FAIL:", failure)
    print("deploy files: %s" % ("ok" if not failures else
                                "%d problems" % len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
