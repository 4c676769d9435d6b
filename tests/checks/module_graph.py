#!/usr/bin/env python3
"""Checks that no crate of the workspace has modules importing each other in a cycle.

Each crate's docs state which of its modules may import which; this keeps the rule true. For every
crate under the workspace (fuzz/ excepted), the top-level module of each file under src/ is a
node, and a `crate::NAME` path outside comments and test modules is an edge to NAME. A cycle in
that graph is printed with its modules, and the check fails.

usage: python3 tests/checks/module_graph.py [ROOT]
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
PATH = re.compile(r"\bcrate::(?:\{([^}]*)\}|([a-z_][a-z0-9_]*))", re.S)
NAME = re.compile(r"[a-z_][a-z0-9_]*")
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*(\{|;)")


def top_module(src, path):
    parts = path.relative_to(src).with_suffix("").parts
    return None if parts[0] in ("lib", "main", "bin") else parts[0]


def edges_of(text):
    text = re.sub(r"//[^\n]*", "", text)
    cut = TESTS.search(text)
    if cut and cut.group(1) == "{":
        text = text[: cut.start()]
    found = set()
    for group, single in PATH.findall(text):
        if single:
            found.add(single)
        else:
            # `crate::{a, b::c}`: the first name of each item
            found.update(m.group(0) for m in (NAME.match(item.strip()) for item in group.split(",")) if m)
    return found


def cycles(graph):
    """Strongly connected components of more than one node (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


failed = False
crates = 0
for manifest in sorted(root.glob("**/Cargo.toml")):
    if {"target", "fuzz", "node_modules"} & set(manifest.parts):
        continue
    src = manifest.parent / "src"
    if not src.is_dir():
        continue
    crates += 1
    graph = {}
    for file in sorted(src.rglob("*.rs")):
        me = top_module(src, file)
        if me is None:
            continue
        graph.setdefault(me, set()).update(t for t in edges_of(file.read_text()) if t != me)
    for component in cycles(graph):
        failed = True
        print(f"{manifest.parent}: modules import each other in a cycle: {' '.join(component)}")
print(f"module graph: {crates} crates checked, {'cycles found' if failed else 'no cycle'}")
sys.exit(1 if failed else 0)
