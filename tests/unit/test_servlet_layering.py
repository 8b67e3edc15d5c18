"""REST modules parse, validate, call a handler and render: the legacy and reporting
servlets must not reach into storage themselves (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parents[2]
THIN_SERVLETS = ("homeserver/rest/client/legacy.py", "homeserver/rest/client/reporting.py")


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


class ServletLayeringTest(unittest.TestCase):
    def test_servlets_do_not_import_stores(self) -> None:
        for rel in THIN_SERVLETS:
            self.assertEqual(storage_imports(ROOT / rel), [], rel)

    def test_detector_sees_store_imports(self) -> None:
        self.assertIn("storage.stores.events", storage_imports(ROOT / "homeserver/handlers/legacy.py"))
