"""What llmkit's package requires of its dependencies (pyproject.toml)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement


def test_the_template_sandbox_and_the_http_parser_are_pinned_above_their_known_escapes() -> None:
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    listed = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {r.name: r.specifier for r in map(Requirement, listed)}
    # jinja2 < 3.1.6: sandbox escapes (CVE-2024-56326, CVE-2025-27516); h11 < 0.16: smuggling.
    for name, last_bad, first_good in [("jinja2", "3.1.5", "3.1.6"), ("h11", "0.15.0", "0.16.0")]:
        assert name in pins and last_bad not in pins[name] and first_good in pins[name]
        assert version(name) in pins[name]
