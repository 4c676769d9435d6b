"""The deployment checked against the binaries it deploys.

The chart (deploy/helm/feature-gateway) is rendered with helm for each values file in its ci/
directory and for values that make no sense, and the rendered manifests are decoded strictly
against the Kubernetes API types (deploy/kubecheck). Then:

- every flag the chart and the Dockerfile pass exists in the real binaries (`serve --help`,
  `fetcher-sidecar --help`), the config mount holds the file --config names, and the probe,
  container, Service and ServiceMonitor ports are the ones --listen and --admin-listen bind;
- values that make no sense fail the render with a message naming the value;
- the binaries run with the rendered arguments, their configuration laid out as the kubelet lays
  out a ConfigMap volume: the probes get the answers the kubelet wants, a ConfigMap update (the
  kubelet's symlink swap) is reloaded in place and a broken one is refused, and SIGTERM drains
  within the grace period.

Run by deploy/check.sh (after deploy/setup.sh): HELM and KUBECHECK name the tools, the binaries
are taken from target/debug, or $CARGO_TARGET_DIR/debug (FEATURE_GATEWAY_BIN_DIR overrides).
"""

import fnmatch
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent

# The generated Python client (clients/python), for GetFeatures.
sys.path.insert(0, str(ROOT / "clients" / "python"))
from featuregateway.v1 import feature_service_pb2 as fs  # noqa: E402
from featuregateway.v1 import feature_service_pb2_grpc as fs_grpc  # noqa: E402

CHART = DEPLOY / "helm" / "feature-gateway"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
HELM = os.environ.get("HELM", "helm")
KUBECHECK = os.environ.get("KUBECHECK", str(DEPLOY / ".tools" / "kubecheck"))
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion).
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.30.0")
BIN_DIR = Path(
    os.environ.get(
        "FEATURE_GATEWAY_BIN_DIR",
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug",
    )
)
# Where the image puts the binaries (deploy/Dockerfile), and so where the manifests call them.
IMAGE_BIN_DIR = "/usr/local/bin"


def load_values(path):
    return yaml.safe_load(Path(path).read_text())


class RenderError(Exception):
    pass


def render(values=None, values_files=(), check=True):
    """The chart's manifests for these values (a dict merged over the files, as `-f` does),
    as {(kind, name): object}; RenderError with helm's message when the render fails."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values or {}, f)
        extra = f.name
    try:
        args = [HELM, "template", "fg", str(CHART), "--kube-version", KUBE_VERSION]
        for v in values_files:
            args += ["-f", str(v)]
        args += ["-f", extra]
        out = subprocess.run(args, capture_output=True, text=True)
    finally:
        os.unlink(extra)
    if out.returncode != 0:
        raise RenderError(out.stderr.strip())
    if check:
        kube = subprocess.run([KUBECHECK], input=out.stdout, capture_output=True, text=True)
        if kube.returncode != 0:
            raise AssertionError(f"rendered manifests do not decode: {kube.stderr}")
    objects = {}
    for doc in yaml.safe_load_all(out.stdout):
        if doc:
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def one(objects, kind):
    found = [o for (k, _), o in objects.items() if k == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(objects):
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(spec, name):
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def flag_value(args, flag):
    assert args.count(flag) == 1, f"{flag} in {args}"
    return args[args.index(flag) + 1]


def port_of(address):
    host, _, port = address.rpartition(":")
    return host, int(port)


def help_flags(binary, *subcommand):
    """The long flags a binary's --help lists (for the subcommand)."""
    out = subprocess.run(
        [str(BIN_DIR / binary), *subcommand, "--help"], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out)) - {"--help", "--version"}


def flags_in(args):
    return [a for a in args if a.startswith("--")]


def duration_seconds(text):
    """Seconds in a configuration duration ("10s", "1m 30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    total = 0.0
    for n, unit in re.findall(r"(\d+)\s*([a-z]+)", text):
        total += int(n) * units[unit]
    return total


# ---------------------------------------------------------------------------------------------
# The rendered manifests against the binaries' flags


class RenderedManifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.serve_flags = help_flags("feature-gateway", "serve")
        cls.sidecar_flags = help_flags("fetcher-sidecar")
        cls.renders = {
            path.name: (load_values(path), render(values_files=[path])) for path in CI_VALUES
        }

    def test_every_values_file_renders(self):
        self.assertIn("sidecar-values.yaml", self.renders)
        self.assertIn("minimal-values.yaml", self.renders)

    def test_the_gateway_is_called_with_flags_serve_has(self):
        for name, (_, objects) in self.renders.items():
            with self.subTest(values=name):
                gateway = container(pod_spec(objects), "gateway")
                # No command: the image's entrypoint, /usr/local/bin/feature-gateway.
                self.assertNotIn("command", gateway)
                args = gateway["args"]
                self.assertEqual(args[0], "serve")
                for flag in flags_in(args):
                    self.assertIn(flag, self.serve_flags, f"{flag} is not a flag of serve")
                for flag in ("--config", "--listen", "--admin-listen"):
                    self.assertIn(flag, args)

    def test_config_names_the_file_the_configmap_mount_holds(self):
        for name, (values, objects) in self.renders.items():
            with self.subTest(values=name):
                spec = pod_spec(objects)
                gateway = container(spec, "gateway")
                config = Path(flag_value(gateway["args"], "--config"))
                mounts = {m["name"]: m for m in gateway["volumeMounts"]}
                mount = mounts["config"]
                self.assertEqual(Path(mount["mountPath"]), config.parent)
                self.assertTrue(mount.get("readOnly"))
                # A subPath mount never sees a ConfigMap update: the reload needs the directory.
                self.assertNotIn("subPath", mount)
                volume = next(v for v in spec["volumes"] if v["name"] == "config")
                configmap = objects[("ConfigMap", volume["configMap"]["name"])]
                self.assertNotIn("items", volume["configMap"])
                self.assertEqual(configmap["data"][config.name], values["config"])
                for file, text in values.get("files", {}).items():
                    self.assertEqual(configmap["data"][file], text)

    def test_ports_are_the_ones_listen_and_admin_listen_bind(self):
        for name, (_, objects) in self.renders.items():
            with self.subTest(values=name):
                gateway = container(pod_spec(objects), "gateway")
                host, grpc_port = port_of(flag_value(gateway["args"], "--listen"))
                admin_host, admin_port = port_of(flag_value(gateway["args"], "--admin-listen"))
                # The kubelet's probes and the Service reach the pod's address, not loopback.
                self.assertEqual(host, "0.0.0.0")
                self.assertEqual(admin_host, "0.0.0.0")
                ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
                self.assertEqual(ports, {"grpc": grpc_port, "admin": admin_port})

                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = gateway[kind]
                    if "grpc" in probe:
                        self.assertEqual(probe["grpc"]["port"], grpc_port, kind)
                    else:
                        self.assertEqual(
                            probe["httpGet"], {"path": "/healthz", "port": admin_port}, kind
                        )
                # Readiness is always the gRPC health service (NOT_SERVING takes a pod out).
                self.assertIn("grpc", gateway["readinessProbe"])

                services = [o for (k, _), o in objects.items() if k == "Service"]
                self.assertEqual(len(services), 2)
                for service in services:
                    by_name = {p["name"]: p for p in service["spec"]["ports"]}
                    self.assertEqual(by_name["grpc"]["targetPort"], "grpc")
                    self.assertEqual(by_name["grpc"]["port"], grpc_port)
                    if service["spec"].get("clusterIP") == "None":
                        # Headless, for client-side balancing: gRPC only, so never scraped.
                        self.assertEqual(set(by_name), {"grpc"})
                    else:
                        self.assertEqual(by_name["metrics"]["targetPort"], "admin")
                        self.assertEqual(by_name["metrics"]["port"], admin_port)

    def test_the_service_monitor_scrapes_metrics_on_the_admin_port(self):
        values, objects = self.renders["sidecar-values.yaml"]
        monitor = one(objects, "ServiceMonitor")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prometheus")
        [endpoint] = monitor["spec"]["endpoints"]
        self.assertEqual(endpoint["path"], "/metrics")
        self.assertEqual(endpoint["port"], "metrics")
        selector = monitor["spec"]["selector"]["matchLabels"]
        main = [
            o
            for (k, _), o in objects.items()
            if k == "Service" and o["spec"].get("clusterIP") != "None"
        ][0]
        self.assertLessEqual(selector.items(), main["metadata"]["labels"].items())
        self.assertNotIn(
            ("ServiceMonitor", "fg-feature-gateway"), self.renders["minimal-values.yaml"][1]
        )

    def test_selectors_find_the_pods(self):
        for name, (_, objects) in self.renders.items():
            with self.subTest(values=name):
                deployment = one(objects, "Deployment")
                pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
                self.assertLessEqual(
                    deployment["spec"]["selector"]["matchLabels"].items(), pod_labels.items()
                )
                for (kind, _), o in objects.items():
                    if kind == "Service":
                        self.assertLessEqual(o["spec"]["selector"].items(), pod_labels.items())
                    if kind == "PodDisruptionBudget":
                        self.assertLessEqual(
                            o["spec"]["selector"]["matchLabels"].items(), pod_labels.items()
                        )

    def test_the_autoscaler_owns_the_replica_count(self):
        values, objects = self.renders["sidecar-values.yaml"]
        deployment = one(objects, "Deployment")
        hpa = one(objects, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment")
        # Without spec.replicas, an upgrade does not reset what the autoscaler chose.
        self.assertNotIn("replicas", deployment["spec"])
        [metric] = hpa["spec"]["metrics"]
        self.assertEqual(metric["containerResource"]["container"], "gateway")
        self.assertIn("cpu", container(pod_spec(objects), "gateway")["resources"]["requests"])

        _, fixed = self.renders["minimal-values.yaml"]
        self.assertEqual(one(fixed, "Deployment")["spec"]["replicas"], 3)
        self.assertFalse([k for k, _ in fixed if k == "HorizontalPodAutoscaler"])

    def test_grace_period_covers_pre_stop_the_longest_call_and_the_flush(self):
        for name, (values, objects) in self.renders.items():
            with self.subTest(values=name):
                spec = pod_spec(objects)
                gateway = container(spec, "gateway")
                pre_stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
                config = values["config"]
                found = re.search(r'max_deadline\s*=\s*"([^"]+)"', config)
                max_deadline = duration_seconds(found.group(1)) if found else 10
                self.assertEqual(
                    spec["terminationGracePeriodSeconds"],
                    pre_stop + max_deadline + 5,
                    "preStop + max_deadline + flush",
                )

    def test_sidecar_is_native_on_loopback_and_the_config_calls_it(self):
        values, objects = self.renders["sidecar-values.yaml"]
        spec = pod_spec(objects)
        sidecar = container(spec, "fetcher-sidecar")
        # A native sidecar: in initContainers, restarted, stopped after the gateway.
        self.assertIn(sidecar, spec["initContainers"])
        self.assertEqual(sidecar["restartPolicy"], "Always")
        self.assertEqual(sidecar["command"], [f"{IMAGE_BIN_DIR}/fetcher-sidecar"])
        for flag in flags_in(sidecar["args"]):
            self.assertIn(flag, self.sidecar_flags, f"{flag} is not a flag of fetcher-sidecar")
        host, port = port_of(flag_value(sidecar["args"], "--listen"))
        self.assertEqual(host, "127.0.0.1")
        self.assertIn(f'address = "http://127.0.0.1:{port}"', values["config"])
        config = Path(flag_value(sidecar["args"], "--config"))
        mount = {m["name"]: m for m in sidecar["volumeMounts"]}["sidecar-config"]
        self.assertEqual(Path(mount["mountPath"]), config.parent)
        volume = next(v for v in spec["volumes"] if v["name"] == "sidecar-config")
        self.assertEqual(
            objects[("ConfigMap", volume["configMap"]["name"])]["data"][config.name],
            values["sidecar"]["config"],
        )
        # Its secrets are its own: nothing of the gateway's environment is passed on.
        self.assertEqual([e["name"] for e in sidecar["env"]], ["FEATURE_GATEWAY_LOG_FORMAT"])

    def test_a_new_gateway_config_is_reloaded_in_place_and_a_new_sidecar_config_replaces_the_pods(
        self,
    ):
        path = CHART / "ci" / "sidecar-values.yaml"
        values, objects = self.renders["sidecar-values.yaml"]
        template = one(objects, "Deployment")["spec"]["template"]

        changed = render(
            {"config": values["config"].replace('deadline = "30ms"', 'deadline = "40ms"')}, [path]
        )
        self.assertEqual(one(changed, "Deployment")["spec"]["template"], template)
        self.assertIn(
            'deadline = "40ms"',
            changed[("ConfigMap", "fg-feature-gateway-config")]["data"]["config.toml"],
        )

        changed = render({"sidecar": {"config": values["sidecar"]["config"] + "\n"}}, [path])
        annotations = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        self.assertNotEqual(
            annotations["checksum/sidecar-config"],
            template["metadata"]["annotations"]["checksum/sidecar-config"],
        )

    def test_pods_run_unprivileged(self):
        for name, (_, objects) in self.renders.items():
            with self.subTest(values=name):
                spec = pod_spec(objects)
                self.assertIs(spec["automountServiceAccountToken"], False)
                self.assertIs(spec["securityContext"]["runAsNonRoot"], True)
                self.assertNotEqual(spec["securityContext"]["runAsUser"], 0)
                for c in spec["containers"] + spec.get("initContainers", []):
                    ctx = c["securityContext"]
                    self.assertIs(ctx["readOnlyRootFilesystem"], True)
                    self.assertIs(ctx["allowPrivilegeEscalation"], False)
                    self.assertEqual(ctx["capabilities"]["drop"], ["ALL"])


# ---------------------------------------------------------------------------------------------
# Values that make no sense


class BadValues(unittest.TestCase):
    MINIMAL = CHART / "ci" / "minimal-values.yaml"
    SIDECAR = CHART / "ci" / "sidecar-values.yaml"

    def refused(self, values, *expected, base=None):
        with self.assertRaises(RenderError) as caught:
            render(values, [base or self.MINIMAL], check=False)
        message = str(caught.exception)
        for text in expected:
            self.assertIn(text, message)
        return message

    def test_a_missing_config(self):
        self.refused({"config": ""}, "config: required", "--set-file config=")
        with self.assertRaises(RenderError) as caught:
            render({}, [], check=False)
        self.assertIn("config: required", str(caught.exception))

    def test_a_config_that_is_not_toml(self):
        self.refused({"config": "[sources\nkind = 1"}, "config: not TOML")

    def test_zero_replicas_with_a_disruption_budget(self):
        self.refused({"replicaCount": 0}, "podDisruptionBudget.enabled with replicaCount 0")

    def test_min_available_that_allows_no_eviction(self):
        self.refused(
            {"podDisruptionBudget": {"minAvailable": 3, "maxUnavailable": None}},
            "podDisruptionBudget.minAvailable: 3 is not below replicaCount (3)",
        )
        self.refused(
            {"podDisruptionBudget": {"minAvailable": "100%", "maxUnavailable": None}},
            "podDisruptionBudget.minAvailable: 100%",
        )
        self.refused(
            {
                "autoscaling": {"enabled": True, "minReplicas": 2},
                "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": None},
            },
            "not below autoscaling.minReplicas (2)",
        )

    def test_max_unavailable_zero(self):
        self.refused(
            {"podDisruptionBudget": {"maxUnavailable": 0}}, "podDisruptionBudget.maxUnavailable: 0"
        )
        self.refused(
            {"podDisruptionBudget": {"maxUnavailable": "0%"}},
            "podDisruptionBudget.maxUnavailable: 0%",
        )

    def test_both_min_available_and_max_unavailable(self):
        self.refused(
            {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
            "set one of minAvailable and maxUnavailable",
        )

    def test_autoscaling_bounds(self):
        self.refused(
            {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}},
            "autoscaling.maxReplicas: 2 is below autoscaling.minReplicas 4",
        )
        self.refused(
            {"autoscaling": {"enabled": True, "minReplicas": 0}}, "autoscaling.minReplicas: 0"
        )
        self.refused(
            {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
            "resources.requests.cpu: required with autoscaling.enabled",
        )

    def test_a_gateway_port_twice(self):
        self.refused(
            {"ports": {"grpc": 9000, "admin": 9000}}, "ports.grpc and ports.admin: both 9000"
        )

    def test_a_value_of_the_wrong_type_or_unknown(self):
        self.refused({"replicaCount": -1}, "/replicaCount")
        self.refused({"replicas": 3}, "'replicas' not allowed")
        self.refused({"ports": {"grpc": 70000}}, "/ports/grpc")
        self.refused(
            {"probes": {"liveness": {"type": "tcp"}}}, "/probes/liveness/type", "'grpc', 'http'"
        )

    def test_grpc_liveness_with_a_required_source(self):
        config = load_values(self.MINIMAL)["config"].replace(
            'kind = "request"', 'kind = "request"\nrequired = true'
        )
        self.refused(
            {"config": config},
            "probes.liveness.type: grpc, with required sources (request)",
            "probes.liveness.type=http",
        )
        objects = render(
            {"config": config, "probes": {"liveness": {"type": "http"}}}, [self.MINIMAL]
        )
        gateway = container(pod_spec(objects), "gateway")
        self.assertEqual(gateway["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertIn("grpc", gateway["readinessProbe"])

    def test_tls_on_the_grpc_port(self):
        config = (
            load_values(self.MINIMAL)["config"] + '\n[server.tls]\ncert = "a.pem"\nkey = "a.key"\n'
        )
        self.refused({"config": config}, "config: [server.tls]", "plaintext")

    def test_a_grace_period_shorter_than_the_drain(self):
        self.refused(
            {"shutdown": {"terminationGracePeriodSeconds": 6}},
            "shutdown.terminationGracePeriodSeconds: 6 is shorter than the drain, 7 s",
        )
        config = load_values(self.MINIMAL)["config"].replace('"2s"', '"2 fortnights"')
        self.refused({"config": config}, "config: [limits] max_deadline", "fortnights")

    def test_a_sidecar_without_its_config_or_a_source_calling_it(self):
        self.refused({"sidecar": {"config": ""}}, "sidecar.config: required", base=self.SIDECAR)
        self.refused(
            {"sidecar": {"port": 7002}},
            'no source of kind "sidecar" with address = "http://127.0.0.1:7002" (sidecar.port)',
            base=self.SIDECAR,
        )
        self.refused(
            {"sidecar": {"port": 9464}},
            "sidecar.port: 9464 is taken by the gateway",
            base=self.SIDECAR,
        )

    def test_a_file_named_like_the_config_or_too_large(self):
        self.refused(
            {"files": {"config.toml": "x"}}, "files: `config.toml` is the configuration itself"
        )
        self.refused(
            {"files": {"big.csv": "x" * 1_000_001}},
            "config and files: ",
            "more than a ConfigMap holds",
        )

    def test_a_service_beyond_the_cluster(self):
        self.refused(
            {"service": {"type": "LoadBalancer"}},
            "service.type: LoadBalancer would publish the admin port",
        )


# ---------------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_instructions(path):
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in Path(path).read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


class Dockerfile(unittest.TestCase):
    PATH = DEPLOY / "Dockerfile"

    @classmethod
    def setUpClass(cls):
        cls.instructions = dockerfile_instructions(cls.PATH)
        stages, stage = [], None
        for word, rest in cls.instructions:
            if word == "FROM":
                stage = {"from": rest, "lines": []}
                stages.append(stage)
            elif stage is not None:
                stage["lines"].append((word, rest))
        cls.stages = stages
        cls.final = stages[-1]

    def final_json(self, word):
        [value] = [rest for w, rest in self.final["lines"] if w == word]
        return yaml.safe_load(value)  # exec form: a JSON array

    def test_hadolint_finds_nothing(self):
        hadolint = DEPLOY / ".venv" / "bin" / "hadolint"
        out = subprocess.run([str(hadolint), str(self.PATH)], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_multi_stage_build_of_both_binaries(self):
        self.assertGreaterEqual(len(self.stages), 2)
        build = self.stages[0]
        self.assertRegex(build["from"], r"\bAS build$")
        runs = " ".join(rest for w, rest in build["lines"] if w == "RUN")
        self.assertIn("cargo build --release --locked -p feature-gateway -p fetcher-sidecar", runs)
        self.assertNotIn("rust:", self.final["from"])

    def test_runs_as_a_non_root_user(self):
        [user] = [rest for w, rest in self.final["lines"] if w == "USER"]
        uid = user.split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) != 0, user)
        pod = pod_spec(render(values_files=[CHART / "ci" / "minimal-values.yaml"]))
        self.assertEqual(int(uid), pod["securityContext"]["runAsUser"])

    def test_entrypoint_and_cmd_are_the_binary_and_its_flags(self):
        copies = [rest for w, rest in self.final["lines"] if w == "COPY"]
        self.assertTrue(
            any(c.startswith("--from=build") and c.endswith(f"{IMAGE_BIN_DIR}/") for c in copies),
            copies,
        )
        self.assertTrue(any("fetcher-sidecar" in c for c in copies))
        entrypoint = self.final_json("ENTRYPOINT")
        self.assertEqual(entrypoint, [f"{IMAGE_BIN_DIR}/feature-gateway"])
        cmd = self.final_json("CMD")
        self.assertEqual(cmd[0], "serve")
        flags = help_flags("feature-gateway", "serve")
        for flag in flags_in(cmd):
            self.assertIn(flag, flags)
        # The image's default command is the chart's: same config path, same ports.
        chart_args = container(
            pod_spec(render(values_files=[CHART / "ci" / "minimal-values.yaml"])), "gateway"
        )["args"]
        self.assertEqual(cmd, chart_args)
        exposed = {int(p) for w, rest in self.final["lines"] if w == "EXPOSE" for p in rest.split()}
        self.assertEqual(
            exposed,
            {
                port_of(flag_value(cmd, "--listen"))[1],
                port_of(flag_value(cmd, "--admin-listen"))[1],
            },
        )

    def test_the_context_has_the_workspace_and_leaves_out_build_outputs(self):
        patterns = [
            line.strip()
            for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]

        def ignored(path):
            parts = path.split("/")
            for pattern in patterns:
                for i in range(1, len(parts) + 1):
                    prefix = "/".join(parts[:i])
                    if fnmatch.fnmatch(prefix, pattern):
                        return True
                    if pattern.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pattern[3:]):
                        return True
            return False

        workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
        needed = ["Cargo.toml", "Cargo.lock", *(f"{m}/Cargo.toml" for m in workspace["members"])]
        for path in needed:
            self.assertFalse(ignored(path), f"{path} is left out of the build context")
        for path in (
            ".git/HEAD",
            "target/debug/feature-gateway",
            "clients/python/.venv/bin/python",
        ):
            self.assertTrue(ignored(path), f"{path} is sent as build context")


# ---------------------------------------------------------------------------------------------
# The binaries, run as the chart runs them


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume, in the order its
    AtomicWriter writes: the files in a new timestamped directory; a symlink `..data_tmp` to it
    renamed over `..data` (the one atomic step); then a symlink `NAME -> ..data/NAME` for each
    file new to the volume, the symlinks of files no longer in it removed, and the old directory
    removed."""

    def __init__(self, path, data):
        self.path = Path(path)
        self.path.mkdir(parents=True)
        self.generation = 0
        self.current = None
        self.update(data)

    def update(self, data):
        self.generation += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{self.generation:09d}"
        new = self.path / stamp
        new.mkdir()
        for name, text in data.items():
            (new / name).write_text(text)
        os.symlink(stamp, self.path / "..data_tmp")
        os.replace(self.path / "..data_tmp", self.path / "..data")
        for name in data:
            if not (self.path / name).is_symlink():
                os.symlink(f"..data/{name}", self.path / name)
        for link in self.path.iterdir():
            if not link.name.startswith("..") and link.name not in data:
                link.unlink()
        if self.current is not None:
            for f in self.current.iterdir():
                f.unlink()
            self.current.rmdir()
        self.current = new


class Process:
    """A binary started with a container's command and arguments; its output collected."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
        self.lines = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if " ready " in line and ("grpc=" in line or "unix=" in line):
                self.ready.set()

    def wait_ready(self, seconds=60):
        if not self.ready.wait(seconds):
            self.stop()
            raise AssertionError("not ready:\n" + "".join(self.lines[-30:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        self.proc.stdout.close()

    def output(self):
        return "".join(self.lines[-40:])


def host_argv(c, args_map):
    """A container's argv on this machine: the image's binaries from BIN_DIR, its paths and
    listen addresses mapped (the pod's mount paths to temporary directories, all interfaces to
    loopback: nothing here listens beyond this machine)."""
    argv = c.get("command") or [f"{IMAGE_BIN_DIR}/feature-gateway"]
    argv = [str(BIN_DIR / Path(argv[0]).name)] + argv[1:] + c.get("args", [])
    out = []
    for a in argv:
        for old, new in args_map.items():
            a = a.replace(old, new)
        out.append(a)
    return out


def health(port, service):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status


def probe(c, kind, port_map):
    """What the kubelet's probe of this kind would conclude: True for success."""
    spec = c[kind]
    try:
        if "grpc" in spec:
            port = port_map[spec["grpc"]["port"]]
            return (
                health(port, spec["grpc"].get("service", ""))
                == health_pb2.HealthCheckResponse.SERVING
            )
        get = spec["httpGet"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port_map[get['port']]}{get['path']}", timeout=1
        ) as r:
            return 200 <= r.status < 400
    except (grpc.RpcError, OSError, urllib.error.URLError):
        return False


def get_features(port, feature_service, user_id):
    """{feature: (status name, value)} of one GetFeatures call, through the generated client."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FeatureServiceStub(channel)
        request = fs.GetFeaturesRequest(
            feature_service=feature_service,
            entities={"user_id": fs.Value(string_value=user_id)},
        )
        response = stub.GetFeatures(request, timeout=1)
    out = {}
    for name, value, status in zip(response.feature_names, response.values, response.statuses):
        kind = value.WhichOneof("kind")
        out[name] = (fs.FeatureStatus.Name(status), getattr(value, kind) if kind else None)
    return out


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return r.read().decode()


def metric(text, name, **labels):
    """The first sample line of `name` with these labels, or None."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return line
    return None


def value(text, name, **labels):
    line = metric(text, name, **labels)
    return float(line.rsplit(" ", 1)[1]) if line else None


def serving_hash(text):
    """The config_hash of feature_gateway_build_info's series at 1: the configuration serving (a
    replaced one reads 0)."""
    found = re.findall(
        r'^feature_gateway_build_info\{[^}]*config_hash="([^"]+)"[^}]*\} 1$', text, re.M
    )
    assert len(found) == 1, text
    return found[0]


def eventually(check, seconds, what):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        time.sleep(0.1)


class RunsAsDeployed(unittest.TestCase):
    def test_probes_config_map_reload_and_shutdown(self):
        path = CHART / "ci" / "sidecar-values.yaml"
        base = load_values(path)
        # Free ports for this run, through the chart's own values (the configuration's sidecar
        # address follows the sidecar's port, as the chart requires).
        grpc_port, admin_port, sidecar_port = free_port(), free_port(), free_port()
        config = base["config"].replace("http://127.0.0.1:7001", f"http://127.0.0.1:{sidecar_port}")
        values = {
            "config": config,
            "ports": {"grpc": grpc_port, "admin": admin_port},
            "sidecar": {"port": sidecar_port},
        }
        objects = render(values, [path])
        spec = pod_spec(objects)
        gateway, sidecar = container(spec, "gateway"), container(spec, "fetcher-sidecar")
        grace = spec["terminationGracePeriodSeconds"]
        pre_stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
        configmaps = {
            v["name"]: objects[("ConfigMap", v["configMap"]["name"])]["data"]
            for v in spec["volumes"]
            if "configMap" in v
        }

        with tempfile.TemporaryDirectory() as tmp:
            args_map = {"0.0.0.0:": "127.0.0.1:"}
            volumes = {}
            for c in (sidecar, gateway):
                for m in c["volumeMounts"]:
                    if m["name"] in configmaps and m["name"] not in volumes:
                        volumes[m["name"]] = ConfigMapVolume(
                            Path(tmp) / m["name"], configmaps[m["name"]]
                        )
                        args_map[m["mountPath"] + "/"] = f"{tmp}/{m['name']}/"
            env = lambda c: {e["name"]: e["value"] for e in c.get("env", [])}  # noqa: E731

            # The native sidecar starts first, then the gateway.
            side = Process(host_argv(sidecar, args_map), env(sidecar))
            self.addCleanup(side.stop)
            side.wait_ready()
            gw = Process(host_argv(gateway, args_map), env(gateway))
            self.addCleanup(gw.stop)
            gw.wait_ready()
            ports = {grpc_port: grpc_port, admin_port: admin_port}

            # The probes the kubelet runs succeed; the metrics the ServiceMonitor scrapes are there.
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertTrue(probe(gateway, kind, ports), f"{kind}\n{gw.output()}")
            first_hash = serving_hash(metrics(admin_port))
            # The table from the ConfigMap (a path relative to the configuration, read through
            # the volume's symlinks) and the sidecar's, at the address the configuration gives.
            PRESENT = "FEATURE_STATUS_PRESENT"
            self.assertEqual(
                get_features(grpc_port, "risk_v1", "u_1"),
                {"user_profile:country": (PRESENT, "FR"), "device:risk_score": (PRESENT, 0.25)},
            )
            self.assertEqual(
                get_features(grpc_port, "risk_v1", "u_3")["user_profile:country"][0],
                "FEATURE_STATUS_NOT_FOUND",
            )
            self.assertEqual(
                value(metrics(admin_port), "feature_gateway_source_up", source="devices"), 1
            )

            # A ConfigMap update that brings a new table under a new name and points the view at
            # it: the kubelet swaps `..data`, the gateway reloads in place and serves it.
            data = dict(configmaps["config"])
            data["config.toml"] = data["config.toml"].replace(
                'path = "users.csv"', 'path = "users-v2.csv"'
            )
            data["users-v2.csv"] = data.pop("users.csv") + "u_3,ES\n"
            volumes["config"].update(data)
            eventually(
                lambda: value(
                    metrics(admin_port), "feature_gateway_config_reloads_total", result="ok"
                )
                == 1,
                10,
                "a reload after the ConfigMap update",
            )
            second_hash = serving_hash(metrics(admin_port))
            self.assertNotEqual(second_hash, first_hash)
            self.assertEqual(
                get_features(grpc_port, "risk_v1", "u_3")["user_profile:country"], (PRESENT, "ES")
            )
            self.assertTrue(probe(gateway, "readinessProbe", ports))

            # A broken update is refused; the running configuration goes on serving.
            data["config.toml"] += "\n[views.broken\n"
            volumes["config"].update(data)
            eventually(
                lambda: value(
                    metrics(admin_port), "feature_gateway_config_reloads_total", result="invalid"
                )
                == 1,
                10,
                "the broken ConfigMap refused",
            )
            self.assertEqual(serving_hash(metrics(admin_port)), second_hash)
            self.assertEqual(
                get_features(grpc_port, "risk_v1", "u_3")["user_profile:country"], (PRESENT, "ES")
            )
            self.assertTrue(probe(gateway, "readinessProbe", ports))

            # Termination: after the preStop sleep the kubelet sends SIGTERM; the gateway drains
            # within what is left of the grace period and exits 0, then the sidecar gets its own.
            started = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = gw.proc.wait(timeout=grace - pre_stop)
            self.assertEqual(code, 0, gw.output())
            self.assertLess(time.monotonic() - started, grace - pre_stop)
            side.proc.send_signal(signal.SIGTERM)
            self.assertEqual(side.proc.wait(timeout=grace), 0, side.output())


if __name__ == "__main__":
    unittest.main(verbosity=2)
