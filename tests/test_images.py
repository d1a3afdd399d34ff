"""Static checks of every image: no Docker engine runs here, so what a build or a pod would trip over is
checked piece by piece: COPY sources, base tags, the user, the entrypoints (run here with --help), the
pins (resolved on their own for each image's interpreter and platform) and hadolint."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from lockfile import lock as pins
from packaging.requirements import Requirement

from agentq.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = ROOT.parent / "shared" / "data"
RESOLVE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentq-tests" / "resolve"


IMAGES = {image.name: image for image in pins.IMAGES}
DOCKERFILES = [ROOT / image.dockerfile for image in pins.IMAGES]
# The subcommands each image's containers run (the operator's Jobs, the chart's Deployments).
STEP_COMMANDS = {
    "infer": [["collect"], ["evaluate"], ["merge"]],
    "train": [["train"]],
    "mock-model": [["collect"], ["preferences"], ["train"], ["merge"], ["evaluate"]],
}


class Dockerfile:
    """The instructions with every build argument at its default (`ARG NAME=default`): what `docker build`
    without --build-arg builds. Build arguments let `make images` point the bases at local images and the CPU
    variants at the CPU pins; the defaults are what users build."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rel = path.relative_to(ROOT)
        parsed = DockerfileParser(fileobj=io.BytesIO(path.read_bytes())).structure
        self.args: dict[str, str] = {}
        self.instructions = []
        for i in parsed:
            if i["instruction"] == "ARG":
                name, _, default = i["value"].partition("=")
                self.args[name.strip()] = default.strip().strip('"')
            if i["instruction"] != "COMMENT":
                self.instructions.append((i["instruction"], self.resolve(i["value"])))

    def resolve(self, value: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), value)

    def of(self, kind: str) -> list[str]:
        return [value for instr, value in self.instructions if instr == kind]

    def final_stage(self) -> list[tuple[str, str]]:
        last_from = max(i for i, (instr, _) in enumerate(self.instructions) if instr == "FROM")
        return self.instructions[last_from:]

    def exec_form(self, kind: str) -> list[str]:
        """The final stage's ENTRYPOINT or CMD; shell form is rejected (signals would go to /bin/sh)."""
        values = [v for instr, v in self.final_stage() if instr == kind]
        if not values:
            return []
        try:
            parsed = json.loads(values[-1])
        except json.JSONDecodeError:
            raise AssertionError(f"{self.rel}: {kind} {values[-1]!r} is not exec form (a JSON array)") from None
        assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), f"{self.rel}: {kind}"
        return parsed


@pytest.fixture(scope="module", params=DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def dockerfile(request) -> Dockerfile:
    return Dockerfile(request.param)


def test_copy_sources_exist(dockerfile):
    copies = dockerfile.of("COPY") + dockerfile.of("ADD")
    assert copies, f"{dockerfile.rel}: copies nothing"
    for value in copies:
        words = shlex.split(value)
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.rel}: COPY source {source!r} is not in the repository"


def test_base_images_pinned_by_tag(dockerfile):
    stages: set[str] = set()
    for value in dockerfile.of("FROM"):
        words = value.split()
        image = words[0]
        if image not in stages:
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            assert tag and tag != "latest", f"{dockerfile.rel}: FROM {image} must name a fixed tag"
            assert "$" not in image, f"{dockerfile.rel}: FROM {image} names a build argument without a default"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    assert len(dockerfile.of("FROM")) >= 2, f"{dockerfile.rel}: expected a multi-stage build"


def test_runs_as_numeric_non_root_user(dockerfile):
    users = [v for instr, v in dockerfile.final_stage() if instr == "USER"]
    assert users, f"{dockerfile.rel}: the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.rel}: USER {users[-1]} must be a numeric non-root uid"


def test_no_weights_baked_in(dockerfile):
    text = dockerfile.path.read_text().lower()
    for marker in (".safetensors", ".gguf", "huggingface-cli download", "hf download", "snapshot_download"):
        assert marker not in text, f"{dockerfile.rel}: mentions {marker}; models come from the store or a cache"


def _lazy_target(argv: list[str]) -> str:
    """The module an `agentq` subcommand imports when it runs (cli.py wires them lazily)."""
    args = build_parser().parse_args([*argv, *(["--round", "x"] if argv[0] in {
        "collect", "preferences", "train", "merge", "evaluate"} else [])])
    return inspect.getclosurevars(args.func).nonlocals["module_name"]


def _run_help(argv: list[str]) -> subprocess.CompletedProcess:
    exe = BIN / argv[0]
    assert exe.exists(), f"{argv[0]} is not installed in the venv"
    return subprocess.run([str(exe), *argv[1:], "--help"], capture_output=True, text=True, timeout=60)


def test_entrypoint_is_a_real_command(dockerfile):
    entrypoint, cmd = dockerfile.exec_form("ENTRYPOINT"), dockerfile.exec_form("CMD")
    assert entrypoint, f"{dockerfile.rel}: no ENTRYPOINT"
    argv = entrypoint + [a for a in cmd if a != "--help"]
    done = _run_help(argv)
    assert done.returncode == 0, f"{dockerfile.rel}: `{' '.join(argv)} --help` failed:\n{done.stderr}"
    assert "usage" in done.stdout.lower()
    if entrypoint[:2] == ["kopf", "run"]:
        module = entrypoint[entrypoint.index("-m") + 1]
        assert importlib.util.find_spec(module), f"{dockerfile.rel}: kopf module {module} does not exist"
    elif len(argv) > 1:
        target = _lazy_target(argv[1:])
        assert importlib.util.find_spec(target), f"{dockerfile.rel}: `{' '.join(argv)}` runs missing {target}"


@pytest.mark.parametrize("image", sorted(STEP_COMMANDS))
def test_step_commands_exist(image):
    dockerfile = Dockerfile(ROOT / IMAGES[image].dockerfile)
    assert dockerfile.exec_form("ENTRYPOINT") == ["agentq"]
    for sub in STEP_COMMANDS[image]:
        done = _run_help(["agentq", *sub])
        assert done.returncode == 0 and "--round" in done.stdout, f"agentq {sub[0]} --help:\n{done.stderr}"
        target = _lazy_target(sub)
        assert importlib.util.find_spec(target), f"{image}: `agentq {sub[0]}` runs {target}, which does not exist"


def test_hadolint_passes_on_every_dockerfile():
    config = ROOT / "images" / "hadolint.yaml"
    done = subprocess.run([str(BIN / "hadolint"), "--config", str(config), *map(str, DOCKERFILES)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install agentq\n")
    done = subprocess.run([str(BIN / "hadolint"), "--config", str(ROOT / "images" / "hadolint.yaml"), str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # `latest`


# ---- pins ------------------------------------------------------------------------------------------------

def lock_drift(image, image_pins: dict[str, str], lock_pins: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Packages the image pins at another version than the lock (the CUDA images drop torch's +cpu label)."""
    def same(image_version: str, lock_version: str) -> bool:
        return image_version == (lock_version if image.cpu_torch else lock_version.split("+")[0])
    return {n: (v, lock_pins[n]) for n, v in image_pins.items() if n in lock_pins and not same(v, lock_pins[n])}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_pins_every_direct_dependency_at_the_lock_version(name):
    image = IMAGES[name]
    dockerfile = Dockerfile(ROOT / image.dockerfile)
    assert any(f"images/requirements/{name}.txt" in v for v in dockerfile.of("COPY")), \
        f"{image.dockerfile} does not install images/requirements/{name}.txt"
    pinned = pins.read_pins(image.requirements)
    for requirement in map(Requirement, pins.top_level(image)):
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            assert pins.normalise(requirement.name) in pinned, \
                f"{image.requirements.name}: {requirement} (from pyproject) is not pinned"
            assert requirement.specifier.contains(pinned[pins.normalise(requirement.name)]), \
                f"{image.requirements.name}: the pin of {requirement.name} breaks pyproject's {requirement}"
    drift = lock_drift(image, pinned, pins.read_pins(pins.LOCK))
    assert not drift, f"{image.requirements.name} differs from requirements.lock (image, lock): {drift}; run make lock"


def test_lock_drift_is_seen():
    """The comparison above can fail: a moved pin, and a CPU label on a CUDA image, are both drift."""
    lock_pins = {"pydantic": "2.14.4", "torch": "2.13.0+cpu"}
    assert lock_drift(IMAGES["controller"], {"pydantic": "2.14.3"}, lock_pins) == {"pydantic": ("2.14.3", "2.14.4")}
    assert lock_drift(IMAGES["infer"], {"torch": "2.13.0"}, lock_pins) == {}
    assert lock_drift(IMAGES["infer"], {"torch": "2.13.0+cpu"}, lock_pins) != {}
    assert lock_drift(IMAGES["mock-model"], {"torch": "2.13.0"}, lock_pins) != {}


def test_venv_is_exactly_the_lock():
    """`make setup` installs the lock and nothing else: the tested venv is what the images were pinned from."""
    out = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    venv = {pins.normalise(p["name"]): p["version"] for p in json.loads(out)}
    lock_pins = pins.read_pins(pins.LOCK)
    assert venv == lock_pins, (f"the venv is not the lock: only in the venv {sorted(venv.keys() - lock_pins.keys())}, "
                               f"only in the lock {sorted(lock_pins.keys() - venv.keys())}, moved "
                               f"{ {n: (venv[n], v) for n, v in lock_pins.items() if n in venv and venv[n] != v} }")


def pip_target_flags(image, target: str) -> list[str]:
    """pip's flags to resolve for the image's interpreter and platform. The python:3.11 images match this
    interpreter; for the others pip takes --platform literally, so every compatible manylinux tag is listed."""
    if image.python == pins.DEV_PYTHON:
        return []
    glibc = int(image.platform.rsplit("_", 1)[1])
    flags = ["--python-version", image.python, "--only-binary=:all:", "--target", target]
    for tag in [f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 16, -1)] + ["manylinux2014_x86_64",
                                                                                    "linux_x86_64"]:
        flags += ["--platform", tag]
    return flags


def pip_resolve(image, requirements: list[str]) -> dict[str, str]:
    """{normalised name: version} pip would install for `requirements` in an empty environment of the image:
    a second resolver, independent of the uv that wrote the pins."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, report = Path(tmp, "req.txt"), Path(tmp, "report.json")
        req_file.write_text("\n".join(requirements) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), "-r", str(req_file),
               *pip_target_flags(image, str(Path(tmp, "target")))]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: ")]
            raise RuntimeError(f"{image.name}: pip could not resolve:\n" + "\n".join(errors[-20:]))
        installs = json.loads(report.read_text())["install"]
    return {pins.normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def _resolve_cached(image) -> dict[str, str]:
    """Resolve the pinned file on its own; a result is cached by the file's content and the target flags."""
    pinned = pins.read_pins(image.requirements)
    key = hashlib.sha256(json.dumps([sorted(pinned.items()), pip_target_flags(image, "-")]).encode()).hexdigest()
    cached = RESOLVE_CACHE / f"{image.name}-{key[:16]}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    resolved = pip_resolve(image, [f"{n}=={v}" for n, v in pinned.items()])
    RESOLVE_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(resolved))
    tmp.replace(cached)
    return resolved


@pytest.fixture(scope="module")
def resolutions():
    """All images resolve at once: each is bound by index round trips, not by this machine's two cores."""
    with ThreadPoolExecutor(max_workers=len(IMAGES)) as pool:
        futures: dict[str, Future] = {name: pool.submit(_resolve_cached, image) for name, image in IMAGES.items()}
        yield futures


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_requirements_resolve_on_their_own(name, resolutions):
    image = IMAGES[name]
    print(f"{name}: resolved for python {image.python} on {image.platform} "
          f"({image.index_note or 'PyPI'})")
    resolved = resolutions[name].result(timeout=600)
    pinned = pins.read_pins(image.requirements)
    unpinned = {n: v for n, v in resolved.items() if n not in pinned}
    assert not unpinned, f"{image.requirements.name}: pip also installs unpinned {unpinned}"
    moved = {n: (pinned[n], resolved.get(n)) for n in pinned if resolved.get(n) != pinned[n]}
    assert not moved, f"{image.requirements.name}: resolution differs from the pins (pin, resolved): {moved}"


def test_optional_vllm_matches_the_infer_pins():
    """vllm is a build argument of Dockerfile.infer (CUDA-only, a ~400 MB wheel): its metadata is checked,
    not installed. Its exact torch pin must be the image's torch, and it must accept the pinned transformers."""
    image = IMAGES["infer"]
    print(f"vllm: CUDA-only optional backend, checked by metadata: {pins.VLLM}")
    assert f"VLLM={pins.VLLM.split('==')[1]}" in (ROOT / image.dockerfile).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                               "--quiet", "--report", str(report), *pip_target_flags(image, tmp), pins.VLLM],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        requires = json.loads(report.read_text())["install"][0]["metadata"]["requires_dist"]
    pinned = pins.read_pins(image.requirements)
    for dep in map(Requirement, requires):
        if dep.marker is None and pins.normalise(dep.name) in {"torch", "transformers"}:
            version = pinned[pins.normalise(dep.name)]
            assert dep.specifier.contains(version), f"{pins.VLLM} needs {dep}, the image pins {version}"


def test_mock_model_tasks_match_the_converter():
    from agentq.tasks.humanevalfix import load_humanevalfix
    from agentq.tasks.schema import read_tasks

    tasks = load_humanevalfix(DATA)
    folder = ROOT / "images" / "mock-model" / "tasks"
    assert read_tasks(folder / "train.jsonl") == tasks[:5]
    assert read_tasks(folder / "test.jsonl") == tasks[100:105]


def test_the_sandbox_command_imports_only_what_the_sandbox_image_installs():
    """The sandbox image carries agentq with a short pin list (no numpy, bm25s, torch): its command must start
    with every other package of this venv made unimportable (the project's own modules aside), as in the pod."""
    installed = pins.read_pins(IMAGES["sandbox"].requirements)
    script = f"""
import importlib.abc, importlib.metadata, sys
from packaging.utils import canonicalize_name
allowed = {sorted(installed)!r}
missing = {{top for top, dists in importlib.metadata.packages_distributions().items()
           if top not in ("agentq", "controller") and not any(canonicalize_name(d) in allowed for d in dists)}}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the sandbox image)")
sys.meta_path.insert(0, Missing())
from agentq.cli import build_parser
args = build_parser().parse_args(["sandbox", "serve"])
import agentq.sandbox.server
print("started")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and "started" in done.stdout, done.stderr[-3000:]
