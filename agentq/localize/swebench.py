"""SWE-bench Lite instances as localisation tasks over a release sdist that approximates each base commit.

The instances' repositories at `base_commit` cannot be cloned here; PyPI can be reached by package name. So
an instance's tree is approximated by its project's source distribution of the same major.minor release (the
`version` field): the earliest final X.Y.z release, the one nearest the development line X.Y that the base
commit belongs to. It is an approximation and is said so wherever it is used: files may have moved, and an
sdist may leave files out (tests, docs), so an instance whose gold file is not in the release is skipped and
counted, as is one whose project has no sdist for that release.

Gold files are the files the instance's `patch` touches. The report is the problem statement; the
FAIL_TO_PASS ids are kept for the test-import prior (many name tests the fix adds, which a release may lack).
Sdists are fetched with PyPI's simple API (PEP 691 JSON, the index pip itself reads), checked against the
index's sha256, and never built: only unpacked (`corpus.unpack_sdist`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import InvalidVersion, Version

from agentq.io import atomic_write_bytes, atomic_write_json
from agentq.localize.corpus import LocTask, patch_files, unpack_sdist

# GitHub repository -> PyPI project
PROJECTS = {
    "astropy/astropy": "astropy", "django/django": "django", "matplotlib/matplotlib": "matplotlib",
    "mwaskom/seaborn": "seaborn", "pallets/flask": "flask", "psf/requests": "requests", "pydata/xarray": "xarray",
    "pylint-dev/pylint": "pylint", "pytest-dev/pytest": "pytest", "scikit-learn/scikit-learn": "scikit-learn",
    "sphinx-doc/sphinx": "sphinx", "sympy/sympy": "sympy",
}
INDEX = "https://pypi.org/simple"
NO_SDIST = "no sdist of the release"
GOLD_MISSING = "gold file missing from the release"
FIELDS = ("repo", "instance_id", "patch", "problem_statement", "version", "FAIL_TO_PASS")


class LiteError(ValueError):
    pass


@dataclass(frozen=True)
class Instance:
    instance_id: str
    repo: str
    version: str
    issue: str
    test_ids: tuple[str, ...]
    gold: tuple[str, ...]

    @property
    def project(self) -> str:
        return PROJECTS.get(self.repo, self.repo.rsplit("/", 1)[-1])


def read_lite(path: str | Path) -> list[Instance]:
    """The instances of a SWE-bench JSON list (the 12-field schema; FAIL_TO_PASS is a JSON-encoded list)."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LiteError(f"{path}: not a readable JSON list ({err})") from None
    if not isinstance(records, list):
        raise LiteError(f"{path}: expected a JSON list of SWE-bench instances")
    out = []
    for i, rec in enumerate(records):
        missing = [f for f in FIELDS if not isinstance(rec, dict) or f not in rec]
        if missing:
            raise LiteError(f"{path}: instance {i}: lacks field(s) {', '.join(missing)}")
        tests = rec["FAIL_TO_PASS"]
        try:
            tests = json.loads(tests) if isinstance(tests, str) else tests
        except ValueError:
            raise LiteError(f"{path}: {rec['instance_id']}: FAIL_TO_PASS is not a JSON list") from None
        gold = tuple(patch_files(rec["patch"]))
        if not gold:
            raise LiteError(f"{path}: {rec['instance_id']}: its patch touches no file")
        out.append(Instance(instance_id=rec["instance_id"], repo=rec["repo"], version=str(rec["version"]),
                            issue=rec["problem_statement"], test_ids=tuple(tests), gold=gold))
    return out


def release_version(filename: str, project: str, version: str) -> Version | None:
    """The release an sdist file name carries when it is a final X.Y[.z] of `project` and major.minor `version`."""
    if not filename.endswith(".tar.gz"):  # what corpus.unpack_sdist reads
        return None
    try:
        name, found = parse_sdist_filename(filename)
        wanted = Version(version)
    except (InvalidSdistFilename, InvalidVersion):
        return None
    if name != canonicalize_name(project) or found.is_prerelease or found.is_devrelease or found.is_postrelease:
        return None
    return found if found.release[:2] == wanted.release[:2] else None


def pick_sdist(files: list[dict], project: str, version: str) -> dict | None:
    """The earliest final release's sdist among an index page's files (PEP 691 `files` entries)."""
    found = [(v, f) for f in files if not f.get("yanked") and (v := release_version(f["filename"], project,
                                                                                      version))]
    return min(found, key=lambda pair: pair[0])[1] if found else None


@dataclass
class SdistCache:
    """Sdists and their unpacked trees under `root`; `fetch` reaches the index only for what is not there.

    A release known to have no sdist is remembered too (`none.json`), so a rerun asks the index nothing."""

    root: Path
    offline: bool = False
    _none: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        none = self.root / "none.json"
        self._none = set(json.loads(none.read_text())) if none.is_file() else set()

    def local(self, project: str, version: str) -> Path | None:
        found = [(v, p) for p in self.root.iterdir() if (v := release_version(p.name, project, version))]
        return min(found)[1] if found else None

    def sdist(self, project: str, version: str) -> Path | None:
        """The release's sdist file, fetched once; None when the index has none (or offline and not cached)."""
        hit = self.local(project, version)
        key = f"{project}=={version}"
        if hit is not None or self.offline or key in self._none:
            return hit
        chosen = pick_sdist(self._index(project), project, version)
        if chosen is None:
            self._none.add(key)
            atomic_write_json(self.root / "none.json", sorted(self._none))
            return None
        data = self._get(chosen["url"], 300).content
        digest = chosen.get("hashes", {}).get("sha256")
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise LiteError(f"{chosen['filename']}: sha256 differs from the index's")
        atomic_write_bytes(self.root / chosen["filename"], data)
        return self.root / chosen["filename"]

    def _index(self, project: str) -> list[dict]:
        return self._get(f"{INDEX}/{project}/", 60, {"Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]

    @staticmethod
    def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
        import httpx

        try:
            return httpx.get(url, timeout=timeout, follow_redirects=True, headers=headers).raise_for_status()
        except httpx.HTTPError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LiteError(f"{url}: {reason} (without network, pass --offline with a filled --lite-cache)") from None

    def tree(self, sdist: Path) -> Path:
        return unpack_sdist(sdist, self.root / "src")


def lite_tasks(instances: list[Instance], cache: SdistCache) -> tuple[list[LocTask], Counter, dict[str, Path]]:
    """(tasks, skipped instances per reason, release tree per task.repo) for the instances whose release could
    be had and holds every gold file. A task's group is its GitHub repository, its repo the sdist's name."""
    tasks: list[LocTask] = []
    skipped: Counter = Counter()
    trees: dict[str, Path] = {}
    for inst in instances:
        sdist = cache.sdist(inst.project, inst.version)
        if sdist is None:
            skipped[NO_SDIST] += 1
            continue
        tree = trees.get(sdist.name) or cache.tree(sdist)
        if any(not (tree / path).is_file() for path in inst.gold):
            skipped[GOLD_MISSING] += 1
            continue
        trees[sdist.name] = tree
        tasks.append(LocTask(task_id=inst.instance_id, group=inst.repo, repo=sdist.name, issue=inst.issue,
                             test_ids=inst.test_ids, gold=inst.gold))
    return tasks, skipped, trees
