#!/usr/bin/env python3
"""Instructions per request: the demo gateway run under valgrind's callgrind while fg-load drives
it, each scenario's user-space instructions counted and divided by the requests served. Unlike
CPU time, an instruction count does not move with what else the machine runs, so it can show a
cut of a few percent that the CPU benchmarks (`bench.py builds`) cannot tell from noise.

  python3 loadtest/instructions.py                      # this build: health, fraud_v1, fraud_v2
  python3 loadtest/instructions.py --other-bin DIR      # this build beside another one
  python3 loadtest/instructions.py --top 25             # and each scenario's costliest functions

What it counts: every instruction the gateway process executes in user space (the request path,
the HTTP/2 transport, the training log's writer thread, the allocator), not the kernel's (system
calls) and not the time lost to cache misses or waiting. So it complements `bench.py`'s CPU time
per request; it does not replace it. Under valgrind the gateway's threads run one at a time and
about fifty times slower, so what depends on timing (how many responses share one socket write,
how many records the writer gathers per batch) is counted at valgrind's pace, the same for both
builds. Each build serves its own demo (same data, same seed); the scenarios run in turn
(health, fraud_v1, fraud_v2), each over a warm gateway: callgrind counts only from
`callgrind_control -i on` to the dump after the load. The training log commits a file every
two seconds here (the demo: every ten), and each count ends once its load's records are written,
so the writer thread's work for them is counted too. Those files hold a few thousand records
where a served gateway's hold a hundred thousand, so the work of each file (its pages,
dictionaries, metadata) weighs more per request than in serving, and how many files a count
holds (one more or one less) moves a count by about 1% (2% for fraud_v2's wider schema).

Options: --seconds (counted per scenario, default 10), --rounds (default 2), --concurrency (16).
Needs valgrind (Debian's `valgrind`). Writes loadtest/out/instructions-<build>-<scenario>.cg.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmarks' gateway and fg-load helpers)


def vector(service: str) -> list[str]:
    return ["--scenario", "features", "--feature-service", service,
            "--entity", "user_id=u_{5}:10000", "--entity", "card_id=c_{5}:10000",
            "--entity", "merchant_id=m_{4}:2000", "--context", "amount=129.99",
            "--context", "currency=USD", "--context", "channel=ecom"]


# The training log's file interval while counting, and the wait for a load's records to be
# written (the writer runs about fifty times slower under valgrind).
ROTATE = 2
SETTLE = 5.0

SCENARIOS = {
    "health": ["--scenario", "health"],
    "fraud_v1": vector("fraud_v1"),
    "fraud_v2": vector("fraud_v2"),
}


def control(pid: int, *flags: str):
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def count(bindir: Path, loadbin: Path, work: Path, name: str, args) -> dict:
    """One gateway of `bindir` under callgrind; each scenario's instructions per request."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "callgrind.out"
    # The demo's files, written by a gateway run natively; then served from its configuration
    # with the training log's files committed every second instead of every ten: the records
    # of a counted load are all written (and counted) before the count ends.
    bench.Gateway(bindir, ["demo", "--dir", str(work / "demo")], work).stop()
    config = work / "demo" / "demo.toml"
    text = config.read_text()
    if 'rotate_interval = "10s"' not in text:
        sys.exit(f"{config}: no rotate_interval of 10s to shorten")
    config.write_text(text.replace('rotate_interval = "10s"', f'rotate_interval = "{ROTATE}s"'))
    gw = bench.Gateway(
        bindir, ["serve", "--config", str(config)], work,
        wrapper=["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}"],
        start_seconds=300)
    result = {}
    try:
        for scenario, fg in SCENARIOS.items():
            # Warm: connections, caches, the allocator's pages, valgrind's translations; then
            # the warm-up's records written before counting starts.
            bench.run_fg_load(loadbin, gw.grpc, fg, args.concurrency, 3.0)
            time.sleep(SETTLE)
            control(gw.proc.pid, "-z")
            control(gw.proc.pid, "-i", "on")
            load = bench.run_fg_load(loadbin, gw.grpc, fg, args.concurrency, args.seconds)
            time.sleep(SETTLE)  # this load's records written
            control(gw.proc.pid, "-i", "off")
            before = set(work.glob("callgrind.out.*"))
            control(gw.proc.pid, "-d", scenario)
            dump = None
            for _ in range(100):
                new = set(work.glob("callgrind.out.*")) - before
                if new:
                    dump = new.pop()
                    break
                time.sleep(0.1)
            if dump is None:
                sys.exit(f"callgrind wrote no dump for {scenario}; see {work / 'gateway.log'}")
            time.sleep(0.5)  # the dump is written in full
            totals = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
            if not totals or load["count"] == 0 or load["errors"]:
                sys.exit(f"{scenario}: no count ({load['count']} requests, {load['errors']} errors)")
            bench.OUT.mkdir(parents=True, exist_ok=True)
            kept = bench.OUT / f"instructions-{name}-{scenario}.cg"
            kept.write_bytes(dump.read_bytes())
            dump.unlink()
            result[scenario] = int(totals.group(1)) / load["count"]
    finally:
        gw.stop()
    return result


def top(cg: Path, n: int) -> list[str]:
    """The `n` functions with the most instructions of their own in a dump (a function's lines
    in several source files, e.g. inlined code, added up)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no",
                           "--threshold=100", str(cg)],
                          capture_output=True, text=True, check=True).stdout
    total, own = 0, {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = ir
            continue
        function = m.group(2).split(":", 1)[-1].split(" [")[0]
        own[function] = own.get(function, 0) + ir
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return [f"| `{f[:110]}` | {100 * ir / max(total, 1):.2f}% |" for f, ir in ranked]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other-bin", help="a directory holding another build's feature-gateway")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            sys.exit(f"{tool} not found: install valgrind (apt-get install valgrind)")
    bindir = bench.build(release=True)
    builds = {"this": bindir}
    if args.other_bin:
        other = Path(args.other_bin)
        if not (other / "feature-gateway").exists():
            sys.exit(f"--other-bin: no feature-gateway in {other}")
        builds["other"] = other
    runs = {b: {s: [] for s in SCENARIOS} for b in builds}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fg-instructions-") as tmp:
        for r in range(args.rounds):
            for name, binaries in builds.items():
                counted = count(binaries, bindir, Path(tmp) / f"{name}-{r}", name, args)
                for s, v in counted.items():
                    runs[name][s].append(v)
    med = {b: {s: statistics.median(v) for s, v in runs[b].items()} for b in builds}
    print(f"[instructions: {time.time() - started:.0f} s]", file=sys.stderr)
    print("# Instructions per request (callgrind)\n")
    print(f"`python3 loadtest/instructions.py{' --other-bin ' + args.other_bin if args.other_bin else ''}` "
          f"on {time.strftime('%Y-%m-%d')}: the demo gateway under valgrind's callgrind, fg-load "
          f"c={args.concurrency}, {args.rounds} round(s) of {args.seconds:g} s counted per scenario; "
          "user-space instructions of the gateway process per request, median over rounds.\n")
    header = "| scenario | " + " | ".join(f"{b} build" for b in builds)
    header += " | this / other |" if "other" in builds else " |"
    print(header)
    print("|---|" + "---:|" * (len(builds) + ("other" in builds)))
    for s in SCENARIOS:
        cells = [f"{med[b][s]:,.0f}" for b in builds]
        if "other" in builds:
            cells.append(f"**{med['this'][s] / med['other'][s]:.3f}x**")
        print(f"| {s} | " + " | ".join(cells) + " |")
    print()
    for b in builds:
        m = med[b]
        print(f"- {b} build: fraud_v1 / health **{m['fraud_v1'] / m['health']:.2f}x**, "
              f"fraud_v2 / fraud_v1 **{m['fraud_v2'] / m['fraud_v1']:.3f}x** "
              f"(rounds: " + ", ".join(
                  f"{a / h:.2f}x" for a, h in zip(runs[b]['fraud_v1'], runs[b]['health'])) + ")")
    if args.top:
        for s in SCENARIOS:
            print(f"\n**{s}, this build: functions by their own instructions**\n")
            print("| function (self) | share |\n|---|---:|")
            print("\n".join(top(bench.OUT / f"instructions-this-{s}.cg", args.top)))


if __name__ == "__main__":
    main()
