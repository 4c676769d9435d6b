#!/usr/bin/env python3
"""Benchmarks of feature-gateway, each beside a baseline measured in the same run.

The machines are shared and noisy, so absolute numbers drift from run to run; what holds is the
ratio to a baseline taken on the same machine in the same minute. Every benchmark here runs its
scenario and its baseline alternately (A B A B ...), with the same load tool, concurrency and
duration, and reports p50 / p99 / throughput of each and their ratios.

  python3 loadtest/bench.py overhead            # the gateway's own overhead (release build)
  python3 loadtest/bench.py overhead --smoke    # a seconds-long run proving the benchmark works

The `overhead` benchmark serves the embedded demo's 20-feature `fraud_v1` vector (static tables
and request context: no I/O, so what is measured is the gateway itself) with random entity keys,
against the baseline of the gRPC health check RPC of the same server (the gRPC floor of this
machine). Results go to stdout and to loadtest/out/<benchmark>.md.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "loadtest" / "out"
SCENARIOS = ROOT / "loadtest" / "scenarios"


def find_ghz() -> str:
    found = shutil.which("ghz")
    if found:
        return found
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
    candidate = Path(gopath or Path.home() / "go") / "bin" / "ghz"
    if candidate.exists():
        return str(candidate)
    sys.exit("ghz not found: run `bash .ci/setup` (go install github.com/bojand/ghz/cmd/ghz@v0.120.0)")


def build(release: bool) -> Path:
    args = ["cargo", "build", "--quiet", "-p", "gateway", "--bin", "feature-gateway"]
    if release:
        args.append("--release")
    subprocess.run(args, cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / ("release" if release else "debug") / "feature-gateway"


class Gateway:
    """The gateway binary serving the demo on loopback ports it picks; stopped on exit."""

    def __init__(self, binary: Path):
        self.dir = tempfile.TemporaryDirectory(prefix="fg-bench-")
        self.log = open(Path(self.dir.name) / "gateway.log", "w")
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [str(binary), "demo", "--dir", str(Path(self.dir.name) / "demo"),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("feature-gateway ready"):
                fields = dict(kv.split("=", 1) for kv in line.split()[2:])
                self.grpc, self.admin = fields["grpc"], fields["admin"]
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        sys.exit("the gateway did not start; see its log")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")


def ghz(ghz_bin: str, target: str, call: str, data: Path | None, concurrency: int,
        duration: str) -> dict:
    args = [ghz_bin, "--insecure", "--call", call, "-c", str(concurrency), "-z", duration,
            "--connections", "1", "--duration-stop", "wait", "-O", "json"]
    if data:
        args += ["-D", str(data)]
    out = subprocess.run(args + [target], capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    lat = {p["percentage"]: p["latency"] / 1e6 for p in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    return {
        "rps": report["rps"],
        "p50": lat.get(50, float("nan")),
        "p90": lat.get(90, float("nan")),
        "p99": lat.get(99, float("nan")),
        "count": report["count"],
        "errors": sum(v for k, v in codes.items() if k != "OK"),
        "codes": codes,
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def overhead(args) -> str:
    binary = build(release=not args.smoke)
    ghz_bin = find_ghz()
    duration = "2s" if args.smoke else f"{args.seconds}s"
    rounds = 1 if args.smoke else args.rounds
    gw = Gateway(binary)
    try:
        # Warm up connections, allocator and tables before measuring.
        ghz(ghz_bin, gw.grpc, "featuregateway.v1.FeatureService/GetFeatures",
            SCENARIOS / "fraud_v1.json", args.concurrency, "1s")
        base, feat = [], []
        for _ in range(rounds):
            base.append(ghz(ghz_bin, gw.grpc, "grpc.health.v1.Health/Check", None,
                            args.concurrency, duration))
            feat.append(ghz(ghz_bin, gw.grpc, "featuregateway.v1.FeatureService/GetFeatures",
                            SCENARIOS / "fraud_v1.json", args.concurrency, duration))
        rss = gw.rss_mb()
    finally:
        gw.stop()

    rows = [("health check (baseline)", base), ("GetFeatures fraud_v1, 20 features", feat)]
    b_p99, f_p99 = median_of(base, "p99"), median_of(feat, "p99")
    b_rps, f_rps = median_of(base, "rps"), median_of(feat, "rps")
    lines = [
        "# Gateway overhead: a 20-feature vector vs the health check RPC",
        "",
        f"`python3 loadtest/bench.py overhead{' --smoke' if args.smoke else ''}` — "
        f"{'debug' if args.smoke else 'release'} build, ghz, concurrency {args.concurrency}, "
        f"{rounds} alternating round(s) of {duration} each, one connection, "
        f"{os.cpu_count()} CPUs shared by the gateway and ghz. Medians over rounds.",
        "",
        "| scenario | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in rows:
        lines.append(
            f"| {name} | {median_of(runs, 'rps'):.0f} | {median_of(runs, 'p50'):.3f} | "
            f"{median_of(runs, 'p90'):.3f} | {median_of(runs, 'p99'):.3f} | "
            f"{sum(r['count'] for r in runs)} | {sum(r['errors'] for r in runs)} |")
    lines += [
        "",
        f"- p99 ratio (features / health): **{f_p99 / b_p99:.2f}x** (target: at most 1.5x)",
        f"- throughput ratio (features / health): **{f_rps / b_rps:.0%}** (target: at least 70%)",
        f"- gateway peak RSS: {rss:.0f} MB",
        "",
    ]
    errors = sum(r["errors"] for r in base + feat)
    if errors:
        lines.append(f"**{errors} requests failed**: "
                     + ", ".join(f"{k}={v}" for r in base + feat for k, v in r["codes"].items() if k != "OK"))
    return "\n".join(lines)


BENCHMARKS = {"overhead": overhead}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS) + ["all"])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on a debug build")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/scenario rounds")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    names = sorted(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    OUT.mkdir(parents=True, exist_ok=True)
    failed = False
    for name in names:
        report = BENCHMARKS[name](args)
        print(report)
        suffix = "-smoke" if args.smoke else ""
        (OUT / f"{name}{suffix}.md").write_text(report + "\n")
        failed |= "requests failed" in report
    # Speed is reported, never asserted; failed requests mean the benchmark itself is broken.
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
