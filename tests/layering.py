#!/usr/bin/env python3
"""Checks Parry's layering: every #include of a Parry header in include/ and
src/ must stay inside the family of the including file or the families that
family declares in CMakeLists.txt (parry_family(NAME ... DEPENDS ...)), and
the declared graph itself must obey docs/architecture.md: no cycles, core
depends on nothing, and the forbidden edges below are absent.

  layering.py SOURCE_DIR     check the tree, exit 1 listing every violation
  layering.py --self-test    check that the checker catches what it must
"""
import os
import re
import sys
import tempfile

# Edges that docs/architecture.md forbids even if someone declares them.
FORBIDDEN = {("preprocess", "detect"), ("conceal", "attack")}

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
FAMILY_CALL = re.compile(r"parry_family\((.*?)\)", re.S)


def declared_graph(cmake_text):
    """{family: set of families it DEPENDS on} from the parry_family calls."""
    graph = {}
    cmake_text = re.sub(r"#[^\n]*", "", cmake_text)  # comments may show the call's syntax
    for call in FAMILY_CALL.findall(cmake_text):
        words = call.split()
        if not words or words[0] == "name":  # the function's own definition
            continue
        name, deps, section = words[0], set(), None
        for word in words[1:]:
            if word.isupper():
                section = word
            elif section == "DEPENDS":
                deps.add(word)
        graph[name] = deps
    return graph


def family_of_header(include):
    """Family of an included path: parry/<family>/x.hpp, parry/<family>.hpp,
    parry/detail/... (core), or an internal src header <family>/x.hpp."""
    parts = include.split("/")
    if parts[0] == "parry":
        parts = parts[1:]
        if len(parts) == 1:
            stem = parts[0].rsplit(".", 1)[0]
            return None if stem == "parry" else stem  # the umbrella header belongs to no family
    if not parts:
        return None
    return "core" if parts[0] == "detail" else parts[0]


def family_of_file(root, path):
    rel = os.path.relpath(path, root).split(os.sep)
    if rel[0] == "include":
        rel = rel[2:]  # include/parry/...
        if len(rel) == 1:
            stem = rel[0].rsplit(".", 1)[0]
            return None if stem == "parry" else stem
    elif rel[0] == "src":
        rel = rel[1:]
    else:
        return None
    return "core" if rel[0] == "detail" else rel[0]


def find_cycle(graph):
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail + [node, nxt]
            if nxt not in state:
                found = visit(nxt, trail + [node])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def check(root):
    problems = []
    with open(os.path.join(root, "CMakeLists.txt")) as f:
        graph = declared_graph(f.read())
    if "core" not in graph:
        return ["CMakeLists.txt declares no core family"]
    if graph["core"]:
        problems.append("core must depend on nothing, but declares " + ", ".join(sorted(graph["core"])))
    for a, b in sorted(FORBIDDEN):
        if b in graph.get(a, ()):
            problems.append("forbidden dependency declared: %s -> %s" % (a, b))
    for family, deps in sorted(graph.items()):
        for dep in sorted(deps - set(graph)):
            problems.append("%s depends on an unknown family %s" % (family, dep))
    cycle = find_cycle(graph)
    if cycle:
        problems.append("dependency cycle: " + " -> ".join(cycle))
    for top in ("include", "src"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith((".hpp", ".cpp", ".h")):
                    continue
                path = os.path.join(dirpath, name)
                family = family_of_file(root, path)
                if family is None:
                    continue
                if family not in graph:
                    problems.append("%s: family '%s' has no parry_family() in CMakeLists.txt"
                                    % (os.path.relpath(path, root), family))
                    continue
                allowed = {family, "core"} | graph[family]
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                for include in INCLUDE.findall(text):
                    target = family_of_header(include)
                    if target is None or target in allowed:
                        continue
                    if not (include.startswith("parry/") or target in graph):
                        continue  # not a Parry header
                    problems.append("%s includes %s: %s may not depend on %s"
                                    % (os.path.relpath(path, root), include, family, target))
    return problems


def self_test():
    cmake = """
parry_family(core SOURCES a.cpp)
parry_family(preprocess SOURCES b.cpp DEPENDS core)
parry_family(detect SOURCES c.cpp DEPENDS core preprocess LIBS Eigen3::Eigen)
"""
    cases = [
        ({"include/parry/detect/d.hpp": '#include "parry/preprocess/p.hpp"\n'}, cmake, 0),
        ({"include/parry/preprocess/p.hpp": '#include "parry/detect/d.hpp"\n'}, cmake, 1),
        ({"src/core/x.cpp": '#include "parry/preprocess/p.hpp"\n'}, cmake, 1),
        ({"src/preprocess/x.cpp": '#include "detect/scoring.hpp"\n'}, cmake, 1),
        ({"src/detect/x.cpp": '#include "parry/detail/files.hpp"\n#include <torch/torch.h>\n'}, cmake, 0),
        ({}, cmake.replace("DEPENDS core preprocess", "DEPENDS core preprocess")
         .replace("parry_family(preprocess SOURCES b.cpp DEPENDS core)",
                  "parry_family(preprocess SOURCES b.cpp DEPENDS core detect)"), 2),  # forbidden + cycle
        ({}, cmake.replace("parry_family(core SOURCES a.cpp)", "parry_family(core SOURCES a.cpp DEPENDS detect)"), 2),
    ]
    failures = 0
    for files, cmake_text, expected in cases:
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, "CMakeLists.txt"), "w") as f:
                f.write(cmake_text)
            for rel, text in files.items():
                os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
                with open(os.path.join(root, rel), "w") as f:
                    f.write(text)
            got = check(root)
            if len(got) != expected:
                failures += 1
                print("self-test: expected %d problem(s) for %s, got %r" % (expected, files or "graph", got))
    print("layering self-test: %d case(s), %d failure(s)" % (len(cases), failures))
    return 1 if failures else 0


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--self-test":
        return self_test()
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    problems = check(sys.argv[1])
    for p in problems:
        print("layering: " + p)
    print("layering: %d violation(s)" % len(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
