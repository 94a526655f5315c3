#!/usr/bin/python3
"""Tests of check_docs.py: on a copy of the repository's docs and sources
with one thing changed at a time, the check must fail and name it.

    check_docs_test.py SOURCE_DIR IDEM_SERVER_BINARY
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "check_docs.py")
SOURCE_DIR = None
BINARY = None


class CheckDocsTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="idem-docs-check-")
        self.addCleanup(shutil.rmtree, self.tmp)
        shutil.copy(os.path.join(SOURCE_DIR, "README.md"), self.tmp)
        for folder in ("docs", "server", "storage", "proto", "client",
                       "deploy", "tools", "tests", "examples"):
            src = os.path.join(SOURCE_DIR, folder)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.tmp, folder),
                                symlinks=True,
                                ignore=shutil.ignore_patterns(
                                    "__pycache__", "*.pb.go", "*_pb2*.py",
                                    "corpus", "node_modules"))

    def run_check(self):
        out = subprocess.run(
            [sys.executable, CHECK, self.tmp, BINARY], capture_output=True,
            text=True, timeout=60, check=False)
        return out.returncode, out.stdout + out.stderr

    def edit(self, rel, old, new, count=1):
        path = os.path.join(self.tmp, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn(old, text, f"{old!r} not in {rel}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, count))

    def remove_line(self, rel, pattern):
        path = os.path.join(self.tmp, rel)
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [l for l in lines if not re.search(pattern, l)]
        self.assertEqual(len(kept), len(lines) - 1, pattern)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def assertFailsWith(self, *expected):
        code, output = self.run_check()
        self.assertEqual(code, 1, output)
        for text in expected:
            self.assertIn(text, output)

    def test_the_unchanged_copy_passes(self):
        code, output = self.run_check()
        self.assertEqual(code, 0, output)

    def test_a_flag_missing_from_the_table_is_named(self):
        self.remove_line("docs/operations.md", r"^\| `--max-wait` ")
        self.assertFailsWith("flag --max-wait (IDEM_MAX_WAIT, default \"5m\") "
                             "is missing from the configuration table")

    def test_a_wrong_default_or_variable_is_named(self):
        self.edit("docs/operations.md", "| `IDEM_MAX_LEASE` | `1h` |",
                  "| `IDEM_MAXLEASE` | `2h` |")
        self.assertFailsWith(
            "--max-lease: variable is 'IDEM_MAXLEASE' in the docs but "
            "'IDEM_MAX_LEASE' in --help",
            '--max-lease: default is "2h" in the docs but "1h" in --help')

    def test_a_flag_the_server_does_not_have_is_named(self):
        self.edit("docs/operations.md", "| `--listen` |",
                  "| `--no-such-flag` | `IDEM_NO_SUCH_FLAG` | `1` | x |\n"
                  "| `--listen` |")
        self.assertFailsWith("--no-such-flag is documented but idem-server "
                             "--help has no such flag")

    def test_a_new_log_event_is_named(self):
        self.edit("server/server.cc", 'Log(LogLevel::kInfo, "shutdown_complete");',
                  'Log(LogLevel::kInfo, "shutdown_complete");\n'
                  '  Log(LogLevel::kWarning,\n'
                  '      "brand_new_event", {{"why", "x"}});')
        self.assertFailsWith("log event brand_new_event", "server/server.cc:",
                             "missing from the Log events table")

    def test_an_event_passed_in_a_variable_is_found(self):
        self.edit("server/server.cc", 'Log(LogLevel::kInfo, "shutdown_complete");',
                  'const char* done = shut_down_\n'
                  '      ? "stopped_by_term" : "shutdown_complete";\n'
                  '  Log(LogLevel::kInfo, done);')
        self.assertFailsWith("log event stopped_by_term")

    def test_an_event_that_cannot_be_resolved_is_named(self):
        self.edit("server/server.cc", 'Log(LogLevel::kInfo, "shutdown_complete");',
                  'Log(LogLevel::kInfo, EventName(), {});')
        self.assertFailsWith("cannot tell which event `EventName()` names")

    def test_a_changed_field_or_level_is_named(self):
        self.edit("server/rpc/rpc_observer.cc", '{{"ns", id.name_space},',
                  '{{"namespace", id.name_space},')
        self.edit("server/rpc/rpc_observer.cc",
                  'Log(LogLevel::kInfo, "lease_takeover"',
                  'Log(LogLevel::kWarning, "lease_takeover"')
        self.assertFailsWith("event lease_takeover: fields differ "
                             "(not documented: namespace; not logged: ns)",
                             "event lease_takeover: levels are info in the "
                             "docs but warning in the sources")

    def test_a_documented_event_no_longer_logged_is_named(self):
        self.remove_line("server/server.cc", r'Log\(LogLevel::kInfo, "shutdown_complete"\);')
        self.assertFailsWith("event shutdown_complete is documented but no "
                             "longer logged")

    def test_an_undocumented_event_row_removed_is_named(self):
        self.remove_line("docs/operations.md", r"^\| `sighup` ")
        self.assertFailsWith("log event sighup (logged at server/server.cc:")

    def test_commented_out_calls_are_not_events(self):
        self.edit("server/server.cc", 'Log(LogLevel::kInfo, "shutdown_complete");',
                  'Log(LogLevel::kInfo, "shutdown_complete");\n'
                  '  // Log(LogLevel::kInfo, "only_in_a_comment");\n'
                  '  /* Log(LogLevel::kInfo, "in_a_block_comment"); */')
        code, output = self.run_check()
        self.assertEqual(code, 0, output)

    def test_a_dead_link_is_named(self):
        self.edit("docs/api.md", "(../proto/idem/v1/idempotency.proto)",
                  "(../proto/idem/v1/gone.proto)")
        self.assertFailsWith("docs/api.md:", "link to ../proto/idem/v1/gone.proto "
                             "points to no file")

    def test_a_moved_docs_file_breaks_the_readme_links(self):
        os.rename(os.path.join(self.tmp, "docs/design.md"),
                  os.path.join(self.tmp, "docs/architecture.md"))
        self.assertFailsWith("README.md:", "link to docs/design.md points to "
                             "no file")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        sys.exit(2)
    SOURCE_DIR, BINARY = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    unittest.main(argv=sys.argv[:1], verbosity=2)
