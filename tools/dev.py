"""`make dev`: the demo's servers and sample documents, plus `dagster dev` (webserver + daemon) on 127.0.0.1.

Prints the UI address; Ctrl-C stops Dagster and the servers.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from demo import REPO, DemoEnvironment

PORT = int(os.environ.get("DAGSTER_PORT", "3000"))


def main() -> int:
    workdir = REPO / ".cache" / "dev"
    workdir.mkdir(parents=True, exist_ok=True)
    with DemoEnvironment(workdir):
        print(f"\nDagster UI: http://127.0.0.1:{PORT}  (Ctrl-C to stop)\n", flush=True)
        command = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
                   "-h", "127.0.0.1", "-p", str(PORT)]
        try:
            return subprocess.call(command, cwd=REPO)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
