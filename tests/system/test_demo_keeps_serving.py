"""After ``stapipe demo`` the dashboard stays up until Ctrl-C (or until a child exits), and says so."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import ROOT, stack_env


def test_keep_serving_says_where_and_how_to_stop_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from worker.commands import _keep_serving, _stop_on_sigterm
        from worker.embedded import Stack
        from stapipe_settings import get_settings
        _stop_on_sigterm()
        stack = Stack()
        stack.start("child", [sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            _keep_serving(get_settings(), 7, stack)
        finally:
            stack.stop()
        print("stopped cleanly", flush=True)
    """)
    env = stack_env(tmp_path / "home", None, None, STAPIPE_DASHBOARD_PORT="8123")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
    assert "The dashboard keeps running: http://127.0.0.1:8123/pipelines/7" in first, first
    assert "Press Ctrl-C to stop everything; `stapipe up` brings it back later." in first, first
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert "stopping the dashboard and the workers" in rest and "stopped cleanly" in rest, rest
    assert proc.returncode == 0
