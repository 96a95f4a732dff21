"""The newcomer's path: the README's walk-through runs in a new terminal as written,
`make help` matches the Makefile, and the Ready banner describes the demo channel
as it is."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from authz_service.cli.dev import describe
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm

REPO = Path(__file__).resolve().parent.parent


def test_the_walkthrough_sources_a_path_that_exists_outside_make() -> None:
    """`make run` keeps its data in <repo>/.authz; a new terminal has no AUTHZ_HOME,
    so the README names the file by a path relative to the repository."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^export AUTHZ_HOME \?= \$\(CURDIR\)/\.authz$", makefile, re.M)
    readme = (REPO / "README.md").read_text()
    sources = re.findall(r"^\s*source (\S+)", readme, re.M)
    assert sources and all(path == ".authz/env" for path in sources), sources


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_lists_every_target_and_tells_the_truth_about_clean() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.+)$", makefile, re.M).group(1).split()) - {"help"}  # type: ignore[union-attr]
    shown = subprocess.run(
        ["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    listed = {m.group(1) for m in re.finditer(r"^make ([\w-]+)", shown, re.M)}
    assert listed == phony
    clean_help = next(line for line in shown.splitlines() if line.startswith("make clean"))
    clean_recipe = makefile.split("\nclean:\n", 1)[1].split("\n\n", 1)[0]
    assert "AUTHZ_HOME" not in clean_recipe.split("@echo", 1)[0]  # it keeps the data...
    assert "keeps local data" in clean_help  # ...and says so


def test_the_banner_describes_the_demo_channel_as_it_is() -> None:
    fresh = adm.Channel(
        channel_id="demo",
        platform=cm.PLATFORM_TELEGRAM,
        policy=cm.ChannelPolicy(dm_policy=cm.DM_POLICY_PAIRING),
    )
    assert "Telegram channel 'demo' with DM policy 'pairing'" in describe(fresh)
    assert "no owner" in describe(fresh)
    changed = adm.Channel(
        channel_id="demo",
        platform=cm.PLATFORM_TELEGRAM,
        policy=cm.ChannelPolicy(dm_policy=cm.DM_POLICY_ALLOWLIST, owner_id="100"),
    )
    text = describe(changed)
    assert "DM policy 'allowlist'" in text and "owner 100" in text and "no owner" not in text
