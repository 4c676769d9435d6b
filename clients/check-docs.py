#!/usr/bin/env python3
"""Checks what README.md and clients/README.md tell a caller to do, by reading or running it.

  statuses   README.md's status table names every FeatureStatus of
             proto/featuregateway/v1/feature_service.proto as clients see it (FEATURE_STATUS_...),
             in the enum's order, UNSPECIFIED aside; and README.md says that the status
             FEATURE_STATUS_NOT_FOUND is not the gRPC code NOT_FOUND.
  ghz        README.md's ghz command sets each call's deadline (-t/--timeout), and a run of fixed
             duration (-z) has --duration-stop wait or ignore, so that ghz's own shutdown is not
             reported as Unavailable. With ghz installed (.ci/setup), every flag of the command
             must be in `ghz --help`; with FEATURE_GATEWAY_ADDR also set, the command runs for 2 s
             against that gateway, and ghz must report OK calls and no Unavailable or Canceled.
  go-module  clients/README.md's command that generates the Go package into your own module runs
             as written, in a new module example.com/app beside a link to this repository, and
             the Go section's snippet must build against what it wrote (and, with
             FEATURE_GATEWAY_ADDR set, fetch fraud_v1). The variant the text describes, with
             fetcher.proto and training_log.proto added, must write byte for byte the files of
             clients/go/featuregatewayv1 (same pinned protoc and plugins).
  python     clients/README.md's Python snippet runs against FEATURE_GATEWAY_ADDR.
  java       clients/README.md's Java snippet makes its warm-up call (wait-for-ready, a GetFeatures
             the gateway refuses) before the GetFeatures with a 50 ms deadline.
  service-config  the service config in clients/README.md's "Calling several replicas" is the one
             clients/go/balance dials with (balance.ServiceConfig), as JSON.

Needs python3; go-module needs clients/setup.sh's tools and go (it runs offline: the module's
dependencies come from the module cache that setup.sh fills). Every check runs even when an
earlier one failed; exit code 1 when any failed.

    python3 clients/check-docs.py
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENTS = Path(__file__).resolve().parent
ROOT = CLIENTS.parent
README = ROOT / "README.md"
CLIENTS_README = CLIENTS / "README.md"
PROTO = ROOT / "proto" / "featuregateway" / "v1" / "feature_service.proto"

failures: list[str] = []


def fail(check: str, message: str) -> None:
    failures.append(f"{check}: {message}")
    print(f"  FAIL {message}")


def section(text: str, heading: str) -> str:
    """The text of a markdown section, from its heading to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    end = re.compile(rf"^{level} ", re.M).search(text, start + len(heading))
    return text[start : end.start() if end else len(text)]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def check_statuses() -> None:
    print("statuses: README.md's status table against the FeatureStatus enum")
    enum = re.search(r"^enum FeatureStatus \{(.*?)^\}", PROTO.read_text(), re.M | re.S)
    want = [n for n in re.findall(r"^\s*(FEATURE_STATUS_\w+)\s*=", enum.group(1), re.M)
            if n != "FEATURE_STATUS_UNSPECIFIED"]
    api = section(README.read_text(), "## The API")
    table = re.search(r"^\| status \| meaning \|\n\|---\|---\|\n((?:\|.*\n)+)", api, re.M)
    if not table:
        fail("statuses", "no `| status | meaning |` table in README.md's \"The API\"")
        return
    got = [re.match(r"\| `([^`]+)` \|", row).group(1) for row in table.group(1).splitlines()]
    if got != want:
        fail("statuses", f"the table lists {got}, the enum (UNSPECIFIED aside) is {want}")
    flat = " ".join(api.split())
    if not re.search(r"`FEATURE_STATUS_NOT_FOUND`[^.]*successful response.*gRPC code `NOT_FOUND`", flat):
        fail("statuses", "README.md's \"The API\" does not tell the status FEATURE_STATUS_NOT_FOUND "
             "(in a successful response) from the gRPC code NOT_FOUND")


def ghz_binary() -> str | None:
    found = shutil.which("ghz")
    if found:
        return found
    try:
        gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    candidate = Path(gopath or Path.home() / "go") / "bin" / "ghz"
    return str(candidate) if candidate.exists() else None


def check_ghz() -> None:
    print("ghz: README.md's ghz command")
    calling = section(README.read_text(), "## Calling it")
    commands = [b for b in code_blocks(calling, "sh") if b.lstrip().startswith("ghz ")]
    if len(commands) != 1:
        fail("ghz", f"want one ghz command in README.md's \"Calling it\", found {len(commands)}")
        return
    args = shlex.split(commands[0].replace("\\\n", " "))
    flags = [a.split("=", 1)[0] for a in args[1:] if a.startswith("-")]
    value = {}  # flag -> its value, for the flags that take one
    for i, a in enumerate(args):
        if a.startswith("-") and "=" in a:
            value[a.split("=", 1)[0]] = a.split("=", 1)[1]
        elif a.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value[a] = args[i + 1]
    if not {"-t", "--timeout"} & set(flags):
        fail("ghz", "the command sets no call deadline (-t/--timeout); ghz's default is 20 s")
    elif value.get("-t", value.get("--timeout")) in ("0", "0s"):
        fail("ghz", "the command's -t 0 means no deadline")
    if {"-z", "--duration"} & set(flags) and value.get("--duration-stop") not in ("wait", "ignore"):
        fail("ghz", "a -z run without --duration-stop wait (or ignore) ends with one Unavailable per "
             "call in flight (ghz closing its connections)")

    ghz = ghz_binary()
    if not ghz:
        print("  (ghz is not installed, so its flags are not checked and it is not run; "
              ".ci/setup installs it)")
        return
    help_text = subprocess.run([ghz, "--help"], capture_output=True, text=True)
    help_text = help_text.stdout + help_text.stderr
    for flag in flags:
        if not re.search(rf"(^|[\s,]){re.escape(flag)}[=\s,]", help_text, re.M):
            fail("ghz", f"`ghz --help` does not list {flag}")
    addr = os.environ.get("FEATURE_GATEWAY_ADDR")
    if not addr:
        print("  (FEATURE_GATEWAY_ADDR is not set, so the command is not run)")
        return
    # The command as written, but for 2 s, against the gateway under test, with a JSON report.
    run = [ghz] + args[1:-1] + ["-O", "json", addr]
    for flag in ("-z", "--duration"):
        if flag in run:
            run[run.index(flag) + 1] = "2s"
    out = subprocess.run(run, cwd=ROOT, capture_output=True, text=True)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        fail("ghz", f"`{shlex.join(run)}` printed no JSON report (exit {out.returncode}): {out.stderr.strip()}")
        return
    codes = report.get("statusCodeDistribution", {})
    print(f"  ran it for 2 s against {addr}: {codes}")
    if not codes.get("OK"):
        fail("ghz", f"no OK call in the run: {codes} {report.get('errorDistribution')}")
    for code in ("Unavailable", "Canceled"):
        if codes.get(code):
            fail("ghz", f"{codes[code]} {code} in the run: {report.get('errorDistribution')}")


# The Go section's snippet, in a main function; the address comes from the command line.
GO_PROGRAM = """package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"example.com/app/featuregatewayv1"
)

func main() {
	ctx := context.Background()
%s
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, s := range resp.GetStatuses() {
		fmt.Println(s)
	}
}
"""


def snippet_statuses_ok(check: str, statuses: list[str]) -> bool:
    """A snippet's fraud_v1 vector: 20 features, the 17 looked up by entity key PRESENT (the
    snippets pass no context, so the 3 request-context features depend on the configuration)."""
    if len(statuses) != 20 or statuses[3:] != ["FEATURE_STATUS_PRESENT"] * 17:
        fail(check, f"the snippet's GetFeatures returned statuses {statuses}")
        return False
    return True


def check_go_module() -> None:
    print("go-module: clients/README.md's command that generates the Go package into your own module")
    marker = "<!-- check-docs: go-own-module"
    text = CLIENTS_README.read_text()
    if marker not in text:
        fail("go-module", f"clients/README.md has no `{marker} -->` before the command")
        return
    block = re.match(r"[^\n]*\n```sh\n(.*?)^```", text[text.index(marker):], re.M | re.S)
    if not block:
        fail("go-module", f"no ```sh block right after `{marker} -->` in clients/README.md")
        return
    command = block.group(1)
    go_blocks = code_blocks(section(text, "## Go (`clients/go`)"), "go")
    if len(go_blocks) != 1:
        fail("go-module", f"want one ```go block in the Go section, found {len(go_blocks)}")
        return
    snippet = go_blocks[0].replace('"127.0.0.1:50051"', "os.Args[1]")
    program = GO_PROGRAM % "".join(f"\t{line}\n" if line else "\n" for line in snippet.splitlines())
    python = CLIENTS / "python" / ".venv" / "bin" / "python"
    tools = CLIENTS / ".tools" / "bin"
    if not python.exists() or not (tools / "protoc-gen-go").exists() or not shutil.which("go"):
        fail("go-module", "tools missing (go, or clients/setup.sh's venv and protoc plugins)")
        return
    # The versions this repository's own Go client pins, so that the build needs only the module
    # cache that clients/setup.sh filled (GOPROXY=off).
    gomod = (CLIENTS / "go" / "go.mod").read_text()
    requires = re.findall(r"^\s+(\S+) (v\S+)( // indirect)?$", gomod, re.M)
    go_version = re.search(r"^go (\S+)$", gomod, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "feature-gateway").symlink_to(ROOT)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        # protoc: the pinned one bundled in grpcio-tools, under the name a user runs.
        (bin_dir / "protoc").write_text(f'#!/bin/sh\nexec "{python}" -m grpc_tools.protoc "$@"\n')
        (bin_dir / "protoc").chmod(0o755)
        env = dict(os.environ, PATH=f"{bin_dir}:{tools}:{os.environ['PATH']}",
                   GOFLAGS="-mod=mod", GOPROXY="off", GOWORK="off")

        def build(app: Path, script: str, files: list[str]) -> bool:
            app.mkdir()
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=app, env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                fail("go-module", f"the command failed in {app.name} (exit {out.returncode}): "
                     f"{out.stderr.strip()}")
                return False
            got = sorted(p.name for p in (app / "featuregatewayv1").glob("*.go")) \
                if (app / "featuregatewayv1").is_dir() else []
            if got != sorted(files):
                fail("go-module", f"the command wrote {got} under featuregatewayv1/, want {sorted(files)}")
                return False
            (app / "go.mod").write_text(
                f"module example.com/app\n\ngo {go_version}\n\nrequire (\n"
                + "".join(f"\t{m} {v}{i}\n" for m, v, i in requires) + ")\n")
            shutil.copy(CLIENTS / "go" / "go.sum", app / "go.sum")
            (app / "main.go").write_text(program)
            out = subprocess.run(["go", "build", "-o", "app", "."], cwd=app, env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                fail("go-module", f"the Go snippet does not build against the package: {out.stderr.strip()}")
                return False
            return True

        client = ["feature_service.pb.go", "feature_service_grpc.pb.go"]
        if build(tmp / "app", command, client):
            addr = os.environ.get("FEATURE_GATEWAY_ADDR")
            if addr:
                out = subprocess.run([str(tmp / "app" / "app"), addr], capture_output=True, text=True)
                if out.returncode != 0:
                    fail("go-module", f"the Go snippet's GetFeatures against {addr} failed: "
                         f"{out.stderr.strip()}")
                elif snippet_statuses_ok("go-module", out.stdout.split()):
                    print(f"  the Go snippet built against it and fetched fraud_v1 from {addr}")
            else:
                print("  the Go snippet built against it (FEATURE_GATEWAY_ADDR is not set, so it "
                      "is not run)")
        # The text's variant: fetcher.proto and training_log.proto added after feature_service.proto,
        # each with an M option of its own to the same import path, in both --go_opt and --go-grpc_opt.
        m = "Mfeaturegateway/v1/feature_service.proto=example.com/app/featuregatewayv1"
        if command.count(m) != 2 or command.count("featuregateway/v1/feature_service.proto\n") != 1:
            fail("go-module", f"the command does not have `{m}` twice and the .proto last, as this "
                 "check expects to derive the variant with fetcher.proto and training_log.proto")
            return
        extra = ["fetcher", "training_log"]
        variant = command.replace(m, ",".join(
            [m] + [f"Mfeaturegateway/v1/{f}.proto=example.com/app/featuregatewayv1" for f in extra]))
        variant = variant.replace("featuregateway/v1/feature_service.proto\n", " ".join(
            ["featuregateway/v1/feature_service.proto"] + [f"featuregateway/v1/{f}.proto" for f in extra]) + "\n")
        if build(tmp / "app-all", variant,
                 client + ["fetcher.pb.go", "fetcher_grpc.pb.go", "training_log.pb.go"]):
            differ = [p.name for p in sorted((tmp / "app-all" / "featuregatewayv1").glob("*.go"))
                      if p.read_bytes() != (CLIENTS / "go" / "featuregatewayv1" / p.name).read_bytes()]
            if differ:
                fail("go-module", f"the variant with fetcher.proto and training_log.proto wrote "
                     f"{differ} unlike clients/go/featuregatewayv1")
            else:
                print("  the variant with fetcher.proto and training_log.proto writes the files of "
                      "clients/go/featuregatewayv1")


def check_python() -> None:
    print("python: clients/README.md's Python snippet")
    python_section = section(CLIENTS_README.read_text(), "## Python (`clients/python`, package `featuregateway`)")
    blocks = code_blocks(python_section, "python")
    if len(blocks) != 1:
        fail("python", f"want one ```python block in the Python section, found {len(blocks)}")
        return
    addr = os.environ.get("FEATURE_GATEWAY_ADDR")
    if not addr:
        print("  (FEATURE_GATEWAY_ADDR is not set, so the snippet is not run)")
        return
    program = ("import sys\nimport grpc\n"
               "from featuregateway.v1 import feature_service_pb2, feature_service_pb2_grpc\n"
               + blocks[0].replace('"127.0.0.1:50051"', "sys.argv[1]")
               + "print(*(feature_service_pb2.FeatureStatus.Name(s) for s in response.statuses))\n")
    out = subprocess.run([str(CLIENTS / "python" / ".venv" / "bin" / "python"), "-c", program, addr],
                         cwd=CLIENTS / "python", capture_output=True, text=True)
    if out.returncode != 0:
        fail("python", f"the snippet failed against {addr}: {out.stderr.strip()}")
    elif snippet_statuses_ok("python", out.stdout.split()):
        print(f"  fetched fraud_v1 from {addr}")


def check_java() -> None:
    print("java: clients/README.md's Java snippet warms up before its first deadline-bound call")
    java = section(CLIENTS_README.read_text(), "## Java (`clients/java`, Maven, Java 17)")
    blocks = code_blocks(java, "java")
    if len(blocks) != 1:
        fail("java", f"want one ```java block in the Java section, found {len(blocks)}")
        return
    code = " ".join(blocks[0].split())
    warm = re.search(r"withWaitForReady\(\)\.withDeadlineAfter\(\d+, TimeUnit\.SECONDS\) ?\.getFeatures\(", code)
    call = code.find(".withDeadlineAfter(50, TimeUnit.MILLISECONDS).getFeatures(")
    if not warm:
        fail("java", "no warm-up GetFeatures with withWaitForReady() and a deadline in seconds")
    if call < 0:
        fail("java", "no GetFeatures with a 50 ms deadline")
    if warm and call >= 0 and warm.start() > call:
        fail("java", "the warm-up call comes after the first call with a real deadline")
    if code.count("newChannelBuilder(") != 1:
        fail("java", "the snippet should build exactly one channel and reuse it")


def check_service_config() -> None:
    print("service-config: clients/README.md's service config against clients/go/balance")
    text = section(CLIENTS_README.read_text(), "## Calling several replicas")
    blocks = code_blocks(text, "json")
    if len(blocks) != 1:
        fail("service-config", f"want one ```json block in \"Calling several replicas\", found {len(blocks)}")
        return
    go = (CLIENTS / "go" / "balance" / "balance.go").read_text()
    match = re.search(r"^const ServiceConfig = `(.*?)`", go, re.M | re.S)
    if not match:
        fail("service-config", "no `const ServiceConfig = `...`` in clients/go/balance/balance.go")
        return
    if json.loads(blocks[0]) != json.loads(match.group(1)):
        fail("service-config", "clients/README.md's service config differs from balance.ServiceConfig")


def main() -> int:
    for check in (check_statuses, check_ghz, check_go_module, check_python, check_java,
                  check_service_config):
        try:
            check()
        except Exception as e:  # a parse error in one check must not hide the others
            fail(check.__name__.removeprefix("check_"), f"{type(e).__name__}: {e}")
    if failures:
        print(f"clients/check-docs: FAILED ({len(failures)}):\n  " + "\n  ".join(failures))
        return 1
    print("clients/check-docs: ok (statuses, ghz, go-module, python, java, service-config)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
