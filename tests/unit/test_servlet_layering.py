"""REST modules parse, validate, call a handler and render: the legacy and reporting
servlets must not reach into storage themselves (issue 11), and no REST module records
security or audit events itself: handlers do (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parents[2]
THIN_SERVLETS = ("homeserver/rest/client/legacy.py", "homeserver/rest/client/reporting.py")
RECORDER_MODULE = "homeserver.handlers.security_events"
# The composition root builds servlets and types its Components with the recorder
# (handed to handlers); it is no servlet and records nothing.
RECORDER_IMPORT_ALLOWED = ("homeserver/rest/routes.py",)


def storage_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "storage" or node.module.startswith("storage.")):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "storage"]
    return found


def audit_violations(path: Path, allow_import: bool = False) -> list[str]:
    """Imports of the audit recorder and ``.record(...)`` calls in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not allow_import and node.module and (
                node.module == RECORDER_MODULE
                or (node.module == "homeserver.handlers"
                    and any(a.name == "security_events" for a in node.names))):
            found.append(f"{path.name}:{node.lineno} imports {RECORDER_MODULE}")
        elif isinstance(node, ast.Import) and not allow_import and any(
                a.name == RECORDER_MODULE for a in node.names):
            found.append(f"{path.name}:{node.lineno} imports {RECORDER_MODULE}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "record"):
            found.append(f"{path.name}:{node.lineno} calls .record(")
    return found


class ServletLayeringTest(unittest.TestCase):
    def test_servlets_do_not_import_stores(self) -> None:
        for rel in THIN_SERVLETS:
            self.assertEqual(storage_imports(ROOT / rel), [], rel)

    def test_detector_sees_store_imports(self) -> None:
        self.assertIn("storage.stores.events", storage_imports(ROOT / "homeserver/handlers/legacy.py"))

    def test_rest_modules_do_not_record_security_events(self) -> None:
        rest = ROOT / "homeserver/rest"
        found = []
        for path in sorted(rest.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += audit_violations(path, allow_import=rel in RECORDER_IMPORT_ALLOWED)
        self.assertEqual(found, [])

    def test_detector_sees_recording(self) -> None:
        # Handlers do record: the check must see both forms there.
        found = audit_violations(ROOT / "homeserver/handlers/sessions.py")
        self.assertTrue(any("imports" in f for f in found), found)
        self.assertTrue(any("calls .record(" in f for f in found), found)
