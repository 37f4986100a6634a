#!/usr/bin/env bash
# Checks that the broker's modules depend only downwards (the rule in src/lib.rs):
# a module may name modules of its own layer or lower ones, never a higher one.
#
#   layer 1  protocol message store error config auth batch tls stats
#   layer 2  queue
#   layer 3  exchange
#   layer 4  broker
#   layer 5  cluster
#   layer 6  channel
#   layer 7  connection
#   layer 8  run server http main lib.rs (the crate root)
#
# "Names" means a `crate::<module>` path, or a `super::` path that climbs out
# of the module into another one, anywhere in a .rs file under src/<module>/
# (or src/<module>.rs), grouped imports (`crate::{a, b::c}`) included. Not
# counted: comments, strings, and items under `#[cfg(test)]` (test modules,
# test-only helpers): tests may build whatever they need.
#
# Every violation is printed as file:line. One listed in scripts/layers-allow.txt
# ("<file> <module named>" per line) is reported but accepted; any other fails the
# check, and so does an allowlist entry that no longer matches anything (delete it:
# the list only shrinks). A module missing from the table above fails too: place it.
#
# Usage: scripts/check-layers.sh        (from anywhere; needs python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec python3 - "$@" <<'PY'
import os
import re
import sys

LAYERS = [
    ["protocol", "message", "store", "error", "config", "auth", "batch", "tls", "stats"],
    ["queue"],
    ["exchange"],
    ["broker"],
    ["cluster"],
    ["channel"],
    ["connection"],
    ["run", "server", "http", "main", "lib"],
]
LAYER = {m: i for i, names in enumerate(LAYERS) for m in names}
ALLOW_FILE = "scripts/layers-allow.txt"

TOKEN = re.compile(
    r"""(?P<nl>\n)
      | (?P<ws>[ \t\r\f\v]+)
      | (?P<line_comment>//[^\n]*)
      | (?P<block_comment>/\*)
      | (?P<raw_str>b?r(?P<hashes>\#*)")
      | (?P<str>b?"(?:[^"\\]|\\.)*")
      | (?P<char>b?'(?:[^'\\\n]|\\[^\n]|\\u\{[0-9a-fA-F]+\})')
      | (?P<lifetime>'[A-Za-z_][A-Za-z0-9_]*)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<path_sep>::)
      | (?P<punct>.)""",
    re.X | re.S,
)


def tokens(text):
    """(kind, value, line) for identifiers and punctuation; comments, strings
    and char literals dropped (their newlines still counted)."""
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = TOKEN.match(text, pos)
        kind = m.lastgroup if m.lastgroup != "hashes" else "raw_str"
        if kind == "block_comment":
            depth, i = 1, m.end()
            while depth and i < len(text):
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            line += text.count("\n", pos, i)
            pos = i
            continue
        if kind == "raw_str":
            end = text.find('"' + m.group("hashes"), m.end())
            end = len(text) if end < 0 else end + 1 + len(m.group("hashes"))
            line += text.count("\n", pos, end)
            pos = end
            continue
        if kind in ("ident", "path_sep", "punct"):
            out.append((kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return out


def module_path(rel):
    """src/queue/mod.rs -> ['queue'], src/queue/dl.rs -> ['queue', 'dl'], src/lib.rs -> []."""
    parts = rel[len("src/"):-len(".rs")].split("/")
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        return []
    return parts


def skip_item(toks, i):
    """Index just past the item starting at toks[i] (ends at `;` or at its
    first brace block's close, outside any brackets)."""
    depth = 0
    while i < len(toks):
        v = toks[i][1]
        if v in "([{":
            depth += 1
        elif v in ")]}":
            depth -= 1
            if depth == 0 and v == "}":
                return i + 1
        elif v == ";" and depth == 0:
            return i + 1
        i += 1
    return i


def attribute_end(toks, i):
    """toks[i] is `#`: index past its `[...]`, or None if not an attribute."""
    j = i + 1
    if j < len(toks) and toks[j][1] == "!":
        j += 1
    if j >= len(toks) or toks[j][1] != "[":
        return None
    depth = 0
    while j < len(toks):
        if toks[j][1] == "[":
            depth += 1
        elif toks[j][1] == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return j


def is_cfg_test(toks, i, end):
    return [t[1] for t in toks[i:end]] == ["#", "[", "cfg", "(", "test", ")", "]"]


def tail_segments(toks, j):
    """Identifiers of the path continuing at toks[j] (`::a::b`), for messages."""
    out = []
    while j + 1 < len(toks) and toks[j][1] == "::" and toks[j + 1][0] == "ident":
        out.append(toks[j + 1][1])
        j += 2
    if j + 1 < len(toks) and toks[j][1] == "::" and toks[j + 1][1] == "{":
        out.append("{..}")
    return out


def parse_group(toks, i, base, found, line):
    """toks[i] is `{` of `prefix::{...}`: record the first segment of every item."""
    depth, expect_item = 0, True
    while i < len(toks):
        v = toks[i][1]
        if v == "{":
            depth += 1
            expect_item = depth == 1
        elif v == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        elif v == "," and depth == 1:
            expect_item = True
        elif expect_item and depth == 1 and toks[i][0] == "ident":
            expect_item = False
            if v != "self":
                found.append((base + [v] + tail_segments(toks, i + 1), line))
        elif depth == 1 and v != "::":
            expect_item = False
        i += 1
    return i


def named_paths(toks, mod_path, test_children):
    """(absolute module path named, line) for every crate::/super:: path outside
    #[cfg(test)] items, resolving super:: against inline `mod x {}` nesting."""
    found = []
    stack = []  # inline modules: (name, brace depth inside them)
    depth = 0
    i = 0
    while i < len(toks):
        kind, v, line = toks[i]
        if v == "#":
            end = attribute_end(toks, i)
            if end is not None:
                if is_cfg_test(toks, i, end):
                    j = end
                    while j < len(toks) and toks[j][1] == "#":
                        j = attribute_end(toks, j) or j + 1
                    # `#[cfg(test)] mod name;` keeps name.rs out of the check
                    k = j + 1 if j < len(toks) and toks[j][1] == "pub" else j
                    if k + 2 < len(toks) and toks[k][1] == "mod" and toks[k + 2][1] == ";":
                        test_children.add(toks[k + 1][1])
                    i = skip_item(toks, j)
                else:
                    i = end
                continue
        if v == "mod" and i + 2 < len(toks) and toks[i + 2][1] == "{" and toks[i + 1][0] == "ident":
            stack.append((toks[i + 1][1], depth + 1))
            depth += 1
            i += 3
            continue
        if v == "{":
            depth += 1
        elif v == "}":
            if stack and stack[-1][1] == depth:
                stack.pop()
            depth -= 1
        elif (
            kind == "ident"
            and v in ("crate", "super")
            and i + 1 < len(toks)
            and toks[i + 1][1] == "::"
            and not (i > 0 and toks[i - 1][1] in ("$", "::"))
        ):
            here = mod_path + [name for name, _ in stack]
            base = [] if v == "crate" else here[:-1]
            j = i + 2
            while j + 1 < len(toks) and toks[j][1] == "super" and toks[j + 1][1] == "::":
                base = base[:-1]
                j += 2
            if j < len(toks) and toks[j][1] == "{":
                i = parse_group(toks, j, base, found, line)
                continue
            if j < len(toks) and toks[j][0] == "ident":
                found.append((base + [toks[j][1]] + tail_segments(toks, j + 1), line))
            else:
                found.append((base, line))
            i = j
            continue
        i += 1
    return found


def main():
    top_modules = set()
    for name in os.listdir("src"):
        if name.endswith(".rs"):
            top_modules.add(name[:-3])
        elif os.path.isdir(os.path.join("src", name)) and name != "bin":
            top_modules.add(name)
    unplaced = sorted(m for m in top_modules if m not in LAYER)

    files = []
    for dirpath, _, names in os.walk("src"):
        for n in names:
            if n.endswith(".rs"):
                files.append(os.path.join(dirpath, n).replace(os.sep, "/"))
    files.sort()

    # Pass 1: every file's paths, and the files that `#[cfg(test)] mod x;` makes test-only.
    test_files = set()
    paths = {}
    for rel in files:
        if rel.startswith("src/bin/"):
            continue  # other binaries: on top, like main
        with open(rel, encoding="utf-8") as f:
            toks = tokens(f.read())
        test_children = set()
        paths[rel] = named_paths(toks, module_path(rel), test_children)
        here = os.path.dirname(rel) if rel.endswith("/mod.rs") or rel == "src/lib.rs" else rel[:-3]
        for child in test_children:
            test_files.add(f"{here}/{child}.rs")
            test_files.add(f"{here}/{child}/")

    # Pass 2: the paths that climb.
    violations = []  # (file, line, from, to, path)
    for rel, found in paths.items():
        if rel == "src/main.rs" or any(rel.startswith(t) for t in test_files):
            continue  # crate:: in main.rs is the binary's own crate; main is on top anyway
        mod_path = module_path(rel)
        own = mod_path[0] if mod_path else "lib"
        for path, line in found:
            if not path or path[0] == own or path[0] not in top_modules:
                continue  # the crate root's own items, the module itself, or not a module
            target = path[0]
            if target not in LAYER or own not in LAYER:
                continue  # reported as unplaced below
            if LAYER[target] > LAYER[own]:
                violations.append((rel, line, own, target, "::".join(path)))

    allowed = set()
    allow_lines = {}
    if os.path.exists(ALLOW_FILE):
        with open(ALLOW_FILE, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                entry = raw.split("#", 1)[0].split()
                if not entry:
                    continue
                if len(entry) != 2:
                    print(f"{ALLOW_FILE}:{n}: expected '<file> <module>', got {raw.strip()!r}")
                    return 1
                allowed.add(tuple(entry))
                allow_lines[tuple(entry)] = n

    failed = False
    used = set()
    for rel, line, own, target, path in violations:
        key = (rel, target)
        if key in allowed:
            used.add(key)
            print(f"{rel}:{line}: {own} names {target} ({path})  [allowed: {ALLOW_FILE}]")
        else:
            failed = True
            print(f"{rel}:{line}: {own} names {target} ({path})  NEW: {own} (layer {LAYER[own] + 1}) "
                  f"must not name {target} (layer {LAYER[target] + 1})")
    for key in sorted(allowed - used):
        failed = True
        print(f"{ALLOW_FILE}:{allow_lines[key]}: '{key[0]} {key[1]}' no longer occurs: delete the line")
    for m in unplaced:
        failed = True
        print(f"src/{m}: module not in the layer table of scripts/check-layers.sh (and src/lib.rs): place it")

    new = sum(1 for v in violations if (v[0], v[3]) not in allowed)
    print(f"layers: {len(files)} files, {len(violations)} upward names "
          f"({len(violations) - new} allowed, {new} new)")
    return 1 if failed else 0


sys.exit(main())
PY
