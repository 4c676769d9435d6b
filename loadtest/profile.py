#!/usr/bin/env python3
"""A CPU profile of the gateway's request path under load: `perf` samples the gateway process
(DWARF call graphs: the release build keeps line tables) while fg-load drives it, and inferno
folds the stacks and draws the flame graph.

  python3 loadtest/profile.py demo      # the demo's fraud_v1 (20 features, training log on)
  python3 loadtest/profile.py health    # the gRPC health check of the same demo gateway
  python3 loadtest/profile.py redis     # user_stats_v1: 8 Redis features (Redis started here)
  python3 loadtest/profile.py stream    # fraud_stream: fraud_v1 and 16 windowed aggregates read
                                        # from tiles in Redis (a week of 10,000 cards' history
                                        # loaded with `backfill --load`, as `bench.py streaming`)

Options: --seconds (sampled, default 5), --frequency (Hz, default 999), --concurrency (16).
Writes loadtest/results/profile-<scenario>.svg and loadtest/out/profile-<scenario>.folded, and
prints the share of the samples in each stage of the request path (inclusive) and the hottest
functions (self). Needs `perf` (Debian's linux-perf) and inferno (`cargo install inferno`).
"""

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmarks' gateway, Redis and fg-load helpers)

RESULTS = bench.ROOT / "loadtest" / "results"

# Stages of the request path, by a frame that marks each (inclusive share of all samples).
STAGES = [
    ("gRPC transport (h2, hyper, tonic; all RPCs)", "h2::proto::connection"),
    ("request message decode (prost)", "ProstDecoder"),
    ("response message encode (prost)", "ProstEncoder"),
    ("feature handler (get_features_inner)", "get_features_inner"),
    ("  plan execution (executor::execute)", "gateway::executor::execute"),
    ("    source stack (tower layers and fetcher)", "gateway_stack::"),
    ("    fetchers (static, redis)", "as fetcher_api::fetcher::Fetcher>::fetch"),
    ("    windowed aggregates: tiles read and merged (aggregation)", "aggregation::read"),
    ("    Redis client (fred)", "fred::"),
    ("    assemble", "gateway::executor::assemble"),
    ("  request checks (row_input)", "gateway::request::row_input"),
    ("  training log submit (record and queue)", "Generation::log_vector"),
    ("  response vector (server::vector)", "gateway::server::vector"),
    ("metrics", "metrics::"),
    ("training-log writer thread", "training-log;"),
    ("syscalls (all)", "entry_SYSCALL_64"),
]


def need(tool: str) -> str:
    found = shutil.which(tool) or str(Path.home() / ".cargo" / "bin" / tool)
    if not Path(found).exists():
        sys.exit(f"{tool} not found: install perf (apt-get install linux-perf) and inferno "
                 "(cargo install inferno)")
    return found


def profile(gw: bench.Gateway, bindir: Path, scenario: list[str], args, name: str) -> Path:
    perf = need("perf")
    bench.run_fg_load(bindir, gw.grpc, scenario, args.concurrency, 1.0)  # warm-up
    load = subprocess.Popen(bench.fg_load_args(bindir, gw.grpc, scenario, args.concurrency,
                                               args.seconds + 3), stdout=subprocess.DEVNULL)
    time.sleep(1)
    bench.OUT.mkdir(parents=True, exist_ok=True)
    data = bench.OUT / f"profile-{name}.perf.data"
    subprocess.run([perf, "record", "-q", "-F", str(args.frequency), "--call-graph", "dwarf,16384",
                    "-p", str(gw.proc.pid), "-o", str(data), "--", "sleep", str(args.seconds)],
                   check=True, stderr=subprocess.DEVNULL)
    load.wait()
    script = subprocess.run([perf, "script", "-i", str(data)], capture_output=True, check=True)
    folded = bench.OUT / f"profile-{name}.folded"
    with open(folded, "wb") as out:
        subprocess.run([need("inferno-collapse-perf")], input=script.stdout, stdout=out, check=True)
    data.unlink()
    return folded


def summary(folded: Path) -> list[str]:
    total, inclusive, leaf = 0, collections.Counter(), collections.Counter()
    for line in folded.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        total += n
        frames = stack.split(";")
        leaf[frames[-1][:100]] += n
        for label, marker in STAGES:
            if marker in stack:
                inclusive[label] += n
    lines = ["| stage (inclusive) | share of the gateway's samples |", "|---|---:|"]
    lines += [f"| {label} | {100 * inclusive[label] / total:.1f}% |" for label, _ in STAGES]
    lines += ["", "| function (self) | share |", "|---|---:|"]
    lines += [f"| `{f}` | {100 * n / total:.1f}% |" for f, n in leaf.most_common(25)]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["demo", "health", "redis", "stream"])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--frequency", type=int, default=999)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--population", type=int, default=100_000)
    args = parser.parse_args()
    bindir = bench.build(release=True)
    fraud = ["--scenario", "features", "--feature-service", "fraud_v1",
             "--entity", "user_id=u_{5}:10000", "--entity", "card_id=c_{5}:10000",
             "--entity", "merchant_id=m_{4}:2000",
             "--context", "amount=129.99", "--context", "currency=USD", "--context", "channel=ecom"]
    with tempfile.TemporaryDirectory(prefix="fg-profile-") as tmp:
        tmp = Path(tmp)
        server = gw = None
        try:
            if args.scenario == "redis":
                server = bench.RedisServer(tmp)
                config = tmp / "redis.toml"
                config.write_text(bench.REDIS_CONFIG.format(port=server.port))
                users = tmp / "users.csv"
                bench.write_users(users, args.population)
                subprocess.run([str(bindir / "feature-gateway"), "materialize", "--config",
                                str(config), "--view", "user_stats", "--input", str(users)],
                               check=True, capture_output=True)
                gw = bench.Gateway(bindir, ["serve", "--config", str(config)], tmp)
                scenario = ["--scenario", "features", "--feature-service", "user_stats_v1",
                            "--entity", f"user_id=u_{{6}}:{args.population}"]
            elif args.scenario == "stream":
                demo = bench.Gateway(bindir, ["demo", "--dir", str(tmp / "demo")], tmp)
                demo.stop()
                base = (tmp / "demo" / "demo.toml").read_text().split("\n[training_log]")[0]
                server = bench.RedisServer(tmp)
                config = tmp / "demo" / "streaming.toml"
                # Serving reads tiles from Redis alone: no broker is contacted.
                config.write_text(bench.streaming_config(base, server.port, "127.0.0.1:9"))
                history = tmp / "history.jsonl"
                subprocess.run([str(bindir / "stream-load"), "history", "--cards", "10000",
                                "--width", "5", "--days", "7", "--out", str(history)],
                               check=True, capture_output=True)
                subprocess.run([str(bindir / "feature-gateway"), "backfill", "--config",
                                str(config), "--view", "card_stream", "--events", str(history),
                                "--load"], check=True, capture_output=True)
                gw = bench.Gateway(bindir, ["serve", "--config", str(config)], tmp)
                scenario = [a.replace("fraud_v1", "fraud_stream") for a in fraud]
            else:
                gw = bench.Gateway(bindir, ["demo", "--dir", str(tmp / "demo")], tmp)
                scenario = fraud if args.scenario == "demo" else ["--scenario", "health"]
            folded = profile(gw, bindir, scenario, args, args.scenario)
        finally:
            if gw:
                gw.stop()
            if server:
                server.stop()
    svg = RESULTS / f"profile-{args.scenario}.svg"
    title = (f"feature-gateway, {args.scenario}: fg-load c={args.concurrency}, "
             f"perf {args.frequency} Hz for {args.seconds} s ({time.strftime('%Y-%m-%d')})")
    with open(svg, "wb") as out:
        # Frames narrower than a pixel are left out: a committed graph stays a few hundred KB.
        subprocess.run([need("inferno-flamegraph"), "--title", title, "--width", "1600",
                        "--minwidth", "1", str(folded)], stdout=out, check=True)
    print(f"# Profile: {args.scenario}\n")
    print(f"`python3 loadtest/profile.py {args.scenario}`: {svg.relative_to(bench.ROOT)}\n")
    print("\n".join(summary(folded)))


if __name__ == "__main__":
    main()
