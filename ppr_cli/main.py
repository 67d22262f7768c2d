"""`ppr`: one command mounting the engine's, the service's, the worker's and the client's
subcommands, each imported lazily, so `ppr gate` starts without torch and the engine never
imports upward.
"""

from __future__ import annotations

import sys

ENGINE = ("demo", "audit", "purify", "make-backdoor", "eval", "methods",
          "import-backdoorbench")
GROUPS = {
    "serve": ("service.cli", "the API (embedded mode unless a broker is configured)"),
    "worker": ("worker.cli", "a Celery worker (one per GPU)"),
    "gate": ("client.cli", "submit to a running service, wait, exit 0/1/2/3 on the verdict"),
}
ENGINE_HELP = {
    "demo": "the whole story on synthetic data: backdoor, audit, HTML report",
    "audit": "run an audit in-process from a spec",
    "purify": "run one purification method, write the purified checkpoint",
    "make-backdoor": "train a backdoored model",
    "eval": "C-Acc and ASR of a checkpoint",
    "methods": "list architectures, attacks and purification methods",
    "import-backdoorbench": "a BackdoorBench attack result -> checkpoint, examples, spec",
}


def usage() -> str:
    """The top-level help text."""
    lines = ["Usage: ppr COMMAND [ARGS]...", "", "ppr-audit: does a backdoor defense remove "
             "the backdoor, or only hide it?", "", "Commands:"]
    for name in ENGINE:
        lines.append(f"  {name:<21} {ENGINE_HELP[name]}")
    for name, (_, text) in GROUPS.items():
        lines.append(f"  {name:<21} {text}")
    lines.append("\nRun `ppr COMMAND --help` for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch to the right sub-application without importing the others."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0)
    cmd = argv[0]
    if cmd in GROUPS:
        module = __import__(GROUPS[cmd][0], fromlist=["app"])
        module.app(args=argv[1:], prog_name=f"ppr {cmd}")
        return
    if cmd in ENGINE:
        from ppr_engine.cli import app

        app(args=argv, prog_name="ppr")
        return
    print(f"error: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
