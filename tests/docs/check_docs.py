#!/usr/bin/python3
"""Keeps the docs from drifting away from the code.

    check_docs.py SOURCE_DIR IDEM_SERVER_BINARY

Three checks, each printing one line per mismatch:

1. The configuration table in docs/operations.md has one row per flag of
   `idem-server --help`, with the same environment variable and default.
2. The "Log events" table in docs/operations.md lists every event the
   server's sources can log (server/ and storage/, tests excluded), with
   the same levels and fields, and no event the sources no longer log.
3. Every relative link in README.md and docs/*.md points to an existing
   file or directory (anchors are not checked).

Exits 0 when everything matches, 1 otherwise. Standard library only.
"""

import os
import re
import subprocess
import sys

OPERATIONS_DOC = "docs/operations.md"
CONFIG_HEADER = ["Flag", "Variable", "Default", "Meaning"]
LOG_HEADER = ["Event", "Level", "Fields", "Meaning"]
LOG_SOURCE_DIRS = ["server", "storage"]
# The definition of Log itself, not a call.
LOG_DEFINITION_FILES = {"server/ops/log.h", "server/ops/log.cc"}
LEVELS = {"kDebug": "debug", "kInfo": "info", "kWarning": "warning",
          "kError": "error"}


# --- Markdown tables ------------------------------------------------------

def split_row(line):
    """Cells of a Markdown table row; `\\|` is a literal bar."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|")
            for c in re.split(r"(?<!\\)\|", line)]


def find_table(text, header):
    """Rows (lists of cells, with line numbers) of the first table whose
    header row is `header`; None if there is no such table."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|"):
            continue
        if [c.lower() for c in split_row(line)] != [h.lower() for h in header]:
            continue
        rows = []
        for j in range(i + 2, len(lines)):  # Skip the |---| line.
            if not lines[j].lstrip().startswith("|"):
                break
            rows.append((j + 1, split_row(lines[j])))
        return rows
    return None


def code_spans(cell):
    return re.findall(r"`([^`]*)`", cell)


def unquote_default(cell):
    """A default as the table shows it: `value`, or `""` for empty."""
    spans = code_spans(cell)
    value = spans[0] if len(spans) == 1 else cell.strip()
    return "" if value == '""' else value


# --- 1. Configuration -----------------------------------------------------

def flags_from_help(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True,
                         timeout=30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{binary} --help exited {out.returncode}: "
                           f"{out.stderr.strip()}")
    flags = {}
    for line in out.stdout.splitlines():
        m = re.match(r'^\s+--([a-z0-9-]+) \(([A-Z0-9_]+), default "(.*)"\)$',
                     line)
        if m:
            flags[m.group(1)] = (m.group(2), m.group(3))
    if not flags:
        raise RuntimeError(f"no flags found in {binary} --help:\n{out.stdout}")
    return flags


def check_configuration(doc_text, binary):
    problems = []
    rows = find_table(doc_text, CONFIG_HEADER)
    if rows is None:
        return [f"{OPERATIONS_DOC}: no configuration table with the header "
                f"| {' | '.join(CONFIG_HEADER)} |"]
    documented = {}
    for line_no, cells in rows:
        where = f"{OPERATIONS_DOC}:{line_no}"
        if len(cells) != 4:
            problems.append(f"{where}: configuration row has {len(cells)} "
                            "cells, expected 4 (flag, variable, default, "
                            "meaning)")
            continue
        flag_spans, env_spans = code_spans(cells[0]), code_spans(cells[1])
        if len(flag_spans) != 1 or not flag_spans[0].startswith("--"):
            problems.append(f"{where}: the flag cell must be one `--flag`, "
                            f"got {cells[0]!r}")
            continue
        flag = flag_spans[0][2:]
        if flag in documented:
            problems.append(f"{where}: --{flag} is documented twice")
        documented[flag] = (env_spans[0] if len(env_spans) == 1 else cells[1],
                            unquote_default(cells[2]), where)
    actual = flags_from_help(binary)
    for flag, (env, default) in actual.items():
        if flag not in documented:
            problems.append(f"{OPERATIONS_DOC}: flag --{flag} ({env}, default "
                            f'"{default}") is missing from the configuration '
                            "table")
            continue
        doc_env, doc_default, where = documented[flag]
        if doc_env != env:
            problems.append(f"{where}: --{flag}: variable is {doc_env!r} in "
                            f"the docs but {env!r} in --help")
        if doc_default != default:
            problems.append(f"{where}: --{flag}: default is "
                            f'"{doc_default}" in the docs but "{default}" in '
                            "--help")
    for flag, (_, _, where) in documented.items():
        if flag not in actual:
            problems.append(f"{where}: --{flag} is documented but "
                            "idem-server --help has no such flag")
    return problems


# --- 2. Log events --------------------------------------------------------

def strip_comments(source):
    """The source with comments blanked (newlines kept), string and char
    literals intact, so that `//` inside "redis-cluster://" survives."""
    out = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", source[i:j]))
            i = j
        elif c == "R" and source.startswith('R"', i) and (
                i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_")):
            m = re.match(r'R"([^()\\ ]{0,16})\(', source[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = source.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(source[i:j])
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and source[j] != c:
                j += 2 if source[j] == "\\" else 1
            out.append(source[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def call_arguments(text, open_paren):
    """The top-level arguments of the call whose '(' is at `open_paren`, and
    the index after its ')'."""
    args, depth, start, i = [], 0, open_paren + 1, open_paren
    while i < len(text):
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < len(text) and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                args.append(text[start:i].strip())
                return args, i + 1
        elif c == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    raise ValueError("unbalanced call")


STRING_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def resolve_event_names(expression, text):
    """Event names an argument can take: its string literals (a literal, or
    `cond ? "a" : "b"`); for a variable, the literals it is initialised or
    assigned with in the same file."""
    names = STRING_LITERAL.findall(expression)
    if names:
        return names
    m = re.fullmatch(r"(?:std::string\()?\s*([A-Za-z_][\w.>-]*)\s*\)?",
                     expression)
    if not m:
        return []
    variable = re.escape(m.group(1).split(".")[-1].split(">")[-1])
    names = []
    # `kind name = ...;`, `name = ...;`, `name(...)`, `name{...}`.
    for definition in re.finditer(
            r"\b" + variable + r"\b\s*(?:=(?!=)|\{|\()([^;]*?)(?:;|\}\s*[,;)]|\)\s*[,;{])",
            text):
        names.extend(STRING_LITERAL.findall(definition.group(1)))
    return names


def events_in_sources(source_dir):
    """{event: {"levels": set, "fields": set, "where": [file:line]}}, and
    problems (calls whose event name cannot be determined)."""
    events, problems = {}, []
    for top in LOG_SOURCE_DIRS:
        for root, dirs, files in os.walk(os.path.join(source_dir, top)):
            dirs[:] = sorted(d for d in dirs if d != "testing")
            for name in sorted(files):
                if not name.endswith((".cc", ".h")) or name.endswith(
                        ("_test.cc", "_benchmark.cc")):
                    continue
                path = os.path.join(root, name)
                rel = os.path.relpath(path, source_dir)
                if rel in LOG_DEFINITION_FILES:
                    continue
                with open(path, encoding="utf-8") as f:
                    text = strip_comments(f.read())
                for call in re.finditer(r"(?<![\w.:>])Log\s*\(", text):
                    line = text.count("\n", 0, call.start()) + 1
                    where = f"{rel}:{line}"
                    try:
                        args, _ = call_arguments(text, call.end() - 1)
                    except ValueError:
                        problems.append(f"{where}: cannot parse this Log call")
                        continue
                    if len(args) < 2:
                        problems.append(f"{where}: a Log call without an event")
                        continue
                    levels = {LEVELS.get(l, l) for l in
                              re.findall(r"LogLevel::(k\w+)", args[0])}
                    if not levels:
                        levels = {"(any)"}
                    names = resolve_event_names(args[1], text)
                    if not names:
                        problems.append(
                            f"{where}: cannot tell which event `{args[1]}` "
                            "names; log a string literal, or a variable "
                            "initialised with literals in the same file")
                        continue
                    fields = set()
                    if len(args) > 2:
                        fields = set(re.findall(r'\{\s*"([^"]+)"\s*,', args[2]))
                    for event in names:
                        entry = events.setdefault(
                            event, {"levels": set(), "fields": set(),
                                    "where": []})
                        entry["levels"] |= levels
                        entry["fields"] |= fields
                        entry["where"].append(where)
    return events, problems


def check_log_events(doc_text, source_dir):
    rows = find_table(doc_text, LOG_HEADER)
    if rows is None:
        return [f"{OPERATIONS_DOC}: no log-event table with the header "
                f"| {' | '.join(LOG_HEADER)} |"]
    events, problems = events_in_sources(source_dir)
    if not events:
        problems.append(f"no Log(LogLevel::..., \"event\", ...) calls found "
                        f"under {', '.join(LOG_SOURCE_DIRS)}: the check is "
                        "looking in the wrong place")
    documented = {}
    for line_no, cells in rows:
        where = f"{OPERATIONS_DOC}:{line_no}"
        if len(cells) != 4 or len(code_spans(cells[0])) != 1:
            problems.append(f"{where}: a log-event row is | `event` | levels | "
                            "`field`, ... | meaning |")
            continue
        event = code_spans(cells[0])[0]
        if event in documented:
            problems.append(f"{where}: event {event} is documented twice")
        levels = {l.strip() for l in cells[1].split(",") if l.strip()}
        documented[event] = (levels, set(code_spans(cells[2])), where)
    for event, found in sorted(events.items()):
        sources = ", ".join(found["where"])
        if event not in documented:
            problems.append(
                f"{OPERATIONS_DOC}: log event {event} (logged at {sources}; "
                f"level {', '.join(sorted(found['levels']))}; fields "
                f"{', '.join(sorted(found['fields'])) or 'none'}) is missing "
                "from the Log events table")
            continue
        levels, fields, where = documented[event]
        if "(any)" not in found["levels"] and levels != found["levels"]:
            problems.append(
                f"{where}: event {event}: levels are "
                f"{', '.join(sorted(levels))} in the docs but "
                f"{', '.join(sorted(found['levels']))} in the sources "
                f"({sources})")
        if fields != found["fields"]:
            missing = sorted(found["fields"] - fields)
            extra = sorted(fields - found["fields"])
            detail = []
            if missing:
                detail.append(f"not documented: {', '.join(missing)}")
            if extra:
                detail.append(f"not logged: {', '.join(extra)}")
            problems.append(f"{where}: event {event}: fields differ "
                            f"({'; '.join(detail)}) ({sources})")
    for event, (_, _, where) in sorted(documented.items()):
        if event not in events:
            problems.append(f"{where}: event {event} is documented but no "
                            f"longer logged under {', '.join(LOG_SOURCE_DIRS)}")
    return problems


# --- 3. Links -------------------------------------------------------------

def markdown_files(source_dir):
    files = ["README.md"]
    docs = os.path.join(source_dir, "docs")
    if os.path.isdir(docs):
        files += sorted(os.path.join("docs", f) for f in os.listdir(docs)
                        if f.endswith(".md"))
    return files


def check_links(source_dir):
    problems = []
    for rel in markdown_files(source_dir):
        path = os.path.join(source_dir, rel)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        in_fence = False
        for line_no, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            prose = re.sub(r"`[^`]*`", "", line)
            targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
            targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", prose)
            for target in targets:
                if re.match(r"^[a-z][a-z0-9+.-]*:", target) or \
                        target.startswith("#"):
                    continue  # http:, mailto:, or an anchor in this file.
                file_part = target.split("#", 1)[0]
                resolved = os.path.normpath(
                    os.path.join(os.path.dirname(path), file_part))
                if not os.path.exists(resolved):
                    problems.append(f"{rel}:{line_no}: link to {target} "
                                    "points to no file")
    return problems


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    source_dir, binary = argv[1], argv[2]
    with open(os.path.join(source_dir, OPERATIONS_DOC), encoding="utf-8") as f:
        operations = f.read()
    checks = [
        ("configuration table vs idem-server --help",
         lambda: check_configuration(operations, binary)),
        ("log events vs the sources",
         lambda: check_log_events(operations, source_dir)),
        ("relative links in README.md and docs/",
         lambda: check_links(source_dir)),
    ]
    failed = 0
    for name, check in checks:
        problems = check()
        print(f"{'FAIL' if problems else 'ok'}: {name}")
        for problem in problems:
            print(f"  {problem}")
        failed += len(problems)
    if failed:
        print(f"{failed} difference(s) between the docs and the code")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
