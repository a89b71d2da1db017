"""The serving path never imports torch, sentence-transformers or transformers.

A fresh interpreter imports every module of the serving packages (found by walking them, so a
new module is covered the day it is added; offline/ is not a serving package) and builds every
app factory, then reports which forbidden modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVING_PACKAGES = ["shared", "services"]
FORBIDDEN = ["torch", "sentence_transformers", "transformers"]

# Runs in the subprocess; argv: JSON lists of sys.path entries, packages, forbidden modules.
CHECKER = textwrap.dedent("""
    import importlib, json, pkgutil, sys, traceback
    paths, packages, forbidden = (json.loads(a) for a in sys.argv[1:4])
    sys.path[:0] = paths
    imported, failed, apps, culprit = [], {}, [], {}

    def note(by):  # the first module whose import (or app) pulled a forbidden one in
        for m in forbidden:
            if m in sys.modules:
                culprit.setdefault(m, by)

    for name in packages:
        pkg = importlib.import_module(name)
        imported.append(name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=name + ".",
                                          onerror=lambda n: failed.setdefault(n, "walk failed")):
            try:
                module = importlib.import_module(info.name)
            except Exception:
                failed[info.name] = traceback.format_exc(limit=3)
                continue
            imported.append(info.name)
            note(info.name)
            if callable(getattr(module, "create_app", None)):
                try:
                    from shared.settings import Settings
                    module.create_app(Settings())
                    apps.append(info.name)
                    note(info.name + ".create_app")
                except Exception:
                    failed[info.name + ".create_app"] = traceback.format_exc(limit=3)
    note("?")
    print(json.dumps({"imported": imported, "failed": failed, "apps": apps, "loaded": culprit}))
""")


def check_imports(packages: list[str], paths: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHECKER, json.dumps(paths), json.dumps(packages),
         json.dumps(FORBIDDEN)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_serving_modules_do_not_import_torch() -> None:
    report = check_imports(SERVING_PACKAGES, [str(REPO)])
    assert not report["failed"], "serving modules failed to import:\n" + "\n".join(
        f"{name}: {err}" for name, err in report["failed"].items())
    assert "services.ranking.app" in report["imported"]
    assert "services.ranking.app" in report["apps"]
    assert not any(m.startswith("offline") for m in report["imported"])
    assert report["loaded"] == {}, (
        f"the serving path imported (module: first importer) {report['loaded']}")


def test_check_flags_a_module_that_imports_torch(tmp_path: Path) -> None:
    """The check can fail: a serving-like package with one torch import is caught."""
    pkg = tmp_path / "leakysvc"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "app.py").write_text("import torch  # the leak\n")
    report = check_imports(["leakysvc"], [str(tmp_path), str(REPO)])
    assert "leakysvc.inner.app" in report["imported"]
    assert report["loaded"] == {"torch": "leakysvc.inner.app"}
