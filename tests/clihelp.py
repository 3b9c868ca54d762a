"""Run the CLI in-process and check the one-line error contract."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from detzoo.cli import app


def run_cli(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


def assert_user_error(result, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one line on stderr naming the problem, no traceback."""
    err = result.stderr.strip()
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("detzoo: error: "), err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)
    return err


def snapshot(folder: Path) -> dict:
    """File name -> bytes of everything under ``folder`` (to check nothing changed)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
