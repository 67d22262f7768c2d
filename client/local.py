"""`ppr gate --local`: run the audit in this process, for pipelines with a GPU runner and no
service. The engine (and torch) is imported only here, so the remote gate stays light.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class LocalInputError(Exception):
    """The spec, checkpoint or data were refused (exit 2)."""


class LocalRunError(Exception):
    """The audit could not finish: engine missing, timeout, or a system fault (exit 3)."""


def run_local(checkpoint: Path, raw_spec: dict[str, Any], method: str | None,
              timeout: float, on_progress: Callable[[str, float, str], None] | None = None
              ) -> tuple[dict[str, Any], str]:
    """Audit `checkpoint` in-process; returns (report as JSON dict, Markdown report)."""
    try:
        from ppr_engine import audit
        from ppr_engine.errors import Cancelled, InputError
        from ppr_engine.report import to_markdown
        from ppr_engine.spec import spec_for
    except ImportError as exc:
        raise LocalRunError(f"--local needs the engine and torch installed ({exc}); "
                            "install ppr-audit with torch, or gate against a service with "
                            "--server") from None
    deadline = time.monotonic() + timeout

    def progress(stage: str, fraction: float, message: str) -> None:
        if on_progress:
            on_progress(stage, fraction, message)
        if time.monotonic() > deadline:
            raise Cancelled(f"the audit was still running ({stage}) after {timeout:g} s")

    try:
        spec = spec_for(raw_spec, method)
        outcome = audit.run(spec, checkpoint, kind="purify" if method else "audit",
                            progress=progress)
    except InputError as exc:
        raise LocalInputError(str(exc)) from None
    except Cancelled as exc:
        raise LocalRunError(f"timed out: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - one line for the pipeline log, not a traceback
        raise LocalRunError(f"the audit failed: {type(exc).__name__}: {exc}") from None
    report = outcome.report
    return json.loads(report.model_dump_json()), to_markdown(report)
