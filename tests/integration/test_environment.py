"""The tests run against what users install.

``pip install -e '.[test]'`` must give promptkit's dependencies the versions a plain
``pip install .`` resolves: a test-only package that caps one of them (as AIPerf
0.13 caps ``huggingface_hub<2``, ``pandas~=2.3.3`` and ``orjson~=3.11.7``) would
test promptkit against versions its users never get. So AIPerf is not in the test
environment: the tests run it from a virtualenv of its own (``tests/aiperf_tool.py``),
as users run a separate tool.

pip resolves a plain install afresh once a module (a dry run, nothing installed; it
needs the package index, as installing the tests did).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tomllib

import aiperf_tool
import pytest
from helpers import ROOT
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = [pytest.mark.aiperf, pytest.mark.slow]


def promptkit_requirements(extra: str | None) -> list[Requirement]:
    """What pyproject.toml asks for: a plain install (``extra`` None), or ``extra``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in found]


def active(requirement: Requirement, extras: set[str]) -> bool:
    """Whether ``requirement`` applies here, for a distribution asked with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**default_environment(), "extra": extra})
               for extra in {"", *extras})


def installed_closure(roots: list[Requirement]) -> dict[str, list[Requirement]]:
    """Every installed distribution ``roots`` pull in, by canonical name, with the
    requirements it declares that apply here."""
    found: dict[str, list[Requirement]] = {}
    todo = [(r, set(r.extras)) for r in roots]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found and not extras:
            continue
        distribution = importlib.metadata.distribution(name)
        declared = [Requirement(t) for t in distribution.requires or []]
        applying = [r for r in declared if active(r, extras)]
        found[name] = found.get(name, []) + applying
        todo += [(r, set(r.extras)) for r in applying]
    return found


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def conflicts(requirements: dict[str, list[Requirement]],
              resolved: dict[str, str]) -> dict[str, list[str]]:
    """The requirements, among ``requirements`` (by the distribution that declares
    them), that exclude the version a plain install resolves: by package, who asks
    what."""
    found: dict[str, list[str]] = {}
    for owner, declared in requirements.items():
        for r in declared:
            version = resolved.get(canonicalize_name(r.name))
            if version is not None and not r.specifier.contains(version, prereleases=True):
                found.setdefault(canonicalize_name(r.name), []).append(
                    f"{owner} requires {r}, a plain install resolves {version}")
    return found


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What ``pip install .`` resolves today for promptkit's requirements, by canonical
    name: pip's report of a dry run that ignores what is installed here."""
    report = tmp_path_factory.mktemp("pip") / "report.json"
    requirements = [str(r) for r in promptkit_requirements(None)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--quiet", "--report", str(report), *requirements],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        "pip could not resolve a plain install of promptkit's requirements (it needs the "
        f"package index):\n{result.stderr[-3000:]}")
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    assert {"huggingface-hub", "pandas", "orjson"} <= set(resolved)
    return resolved


def test_aiperf_is_not_in_the_test_environment() -> None:
    assert importlib.util.find_spec("aiperf") is None
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("aiperf")
    # ...but in its own virtualenv, where the tests run it.
    assert aiperf_tool.executable().is_file()
    assert not aiperf_tool.venv().samefile(sys.prefix)


def test_installed_versions_are_what_a_plain_install_resolves(plain: dict[str, str]) -> None:
    """Every package a plain install picks is installed here at that version or newer
    (newer: a release since pip resolved the test environment)."""
    here = {name: installed(name) for name in plain}
    behind = {name: (here[name], version) for name, version in plain.items()
              if here[name] is None or Version(here[name]) < Version(version)}
    assert behind == {}, (
        "installed here (None: not at all), and what a plain install resolves: the tests "
        f"would not run against users' versions: {behind}")


def test_no_test_dependency_holds_back_a_package_promptkit_needs(
        plain: dict[str, str]) -> None:
    """Nothing only the test extra brings excludes the version a plain install resolves
    of a package promptkit needs."""
    runtime = installed_closure(promptkit_requirements(None))
    tested = installed_closure(promptkit_requirements("test"))
    test_only = {name: declared for name, declared in tested.items() if name not in runtime}
    assert {"pytest", "hypothesis", "transformers"} <= set(test_only)
    assert conflicts(test_only, {n: v for n, v in plain.items() if n in runtime}) == {}


def test_the_check_finds_what_aiperf_would_hold_back(plain: dict[str, str]) -> None:
    """The check above, given AIPerf as a test dependency (its requirements as its own
    virtualenv declares them), names the packages it would pull below a plain
    install: it can fail."""
    declared = [Requirement(t) for t in aiperf_tool.call("requires", distribution="aiperf")]
    found = conflicts({"aiperf": [r for r in declared if active(r, set())]}, plain)
    assert {"huggingface-hub", "pandas", "orjson"} <= set(found), found
