"""Exact, complete pins for every image, resolved for the Python and platform that image runs.

Why generated: an image must install the same versions the project is tested with (the working venv),
plus the CUDA-only packages the venv cannot hold (CUDA torch's nvidia-* wheels, bitsandbytes). pip
resolves each image's top-level requirements (pyproject extras) for the image's interpreter and
platform, constrained to the venv's versions, and writes the full closure; `--no-deps`-free installs
in the Dockerfiles then cannot drift. tests/test_images.py re-resolves each file on its own and fails
when a package is missing or a pin moved.

    .venv/bin/python images/pins.py            # rewrite images/requirements/*.txt
    .venv/bin/python images/pins.py --check    # exit 1 when a file is stale
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "images" / "requirements"
# Ubuntu 24.04 (the CUDA images) has glibc 2.39; manylinux tags name the oldest glibc a wheel needs, and
# pip takes --platform literally, so every compatible tag is listed.
UBUNTU_2404 = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)) + (
    "manylinux2014_x86_64", "linux_x86_64")
BITSANDBYTES = "bitsandbytes==0.50.2"
# The newest vllm whose wheel pins torch==2.13.0 and accepts transformers 5.23 (0.31+ cap transformers below it).
VLLM = "vllm==0.30.0"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    extras: tuple[str, ...]
    extra_requires: tuple[str, ...] = ()
    # None: this machine's interpreter and platform (the python:3.11 images match the venv).
    python: str | None = None
    platforms: tuple[str, ...] = ()
    index_note: str = ""
    cpu_torch: bool = False

    @property
    def requirements(self) -> Path:
        return REQUIREMENTS / f"{self.name}.txt"


IMAGES = (
    Image("infer", "Dockerfile.infer", ("infer", "eval", "s3"), (BITSANDBYTES,), "3.12", UBUNTU_2404,
          "CUDA torch from PyPI (its CUDA 13 wheels), for the nvidia/cuda ubuntu24.04 base's python3.12"),
    Image("train", "Dockerfile.train", ("infer", "train", "s3"), (), "3.12", UBUNTU_2404,
          "CUDA torch from PyPI, for the nvidia/cuda ubuntu24.04 base's python3.12"),
    Image("mock-model", "images/mock-model/Dockerfile", ("infer", "train", "eval", "s3"), cpu_torch=True,
          index_note="CPU torch (+cpu) from the PyTorch CPU index"),
    Image("controller", "images/controller/Dockerfile", ("controller",)),
    Image("sandbox", "images/sandbox/Dockerfile", ()),
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


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


def target_flags(image: Image, target: str) -> list[str]:
    if image.python is None:
        return []
    flags = ["--python-version", image.python, "--only-binary=:all:", "--target", target]
    for platform in image.platforms:
        flags += ["--platform", platform]
    return flags


def resolve(image: Image, requirements: list[str], constraints: list[str] = ()) -> dict[str, str]:
    """{normalised name: version} pip would install for `requirements` in an empty environment of the image."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, con_file, report = Path(tmp, "req.txt"), Path(tmp, "con.txt"), Path(tmp, "report.json")
        req_file.write_text("\n".join(requirements) + "\n")
        con_file.write_text("\n".join(constraints) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--use-feature=fast-deps", "--report", str(report),
               "-r", str(req_file), "-c", str(con_file),
               *target_flags(image, str(Path(tmp, "target")))]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: ")]
            raise RuntimeError(f"{image.name}: pip could not resolve:\n" + "\n".join(errors[-20:]))
        installs = json.loads(report.read_text())["install"]
    return {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def venv_pins() -> list[str]:
    """The working venv's versions as constraints (a CPU local label dropped: the CUDA build has none)."""
    out = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    return [f"{p['name']}=={p['version'].split('+')[0]}" for p in json.loads(out) if p["name"] != "agentq"]


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalise(name)] = version
    return pins


def render(image: Image, pins: dict[str, str]) -> str:
    header = [
        f"# {image.name} image ({image.dockerfile}): generated by images/pins.py; do not edit by hand.",
        f"# Extras: {', '.join(image.extras) or 'none (core only)'}. {image.index_note}".rstrip(". ") + ".",
    ]
    return "\n".join(header + [f"{name}=={version}" for name, version in sorted(pins.items())]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a requirements file is stale")
    args = parser.parse_args()
    constraints = [c for c in venv_pins() if not c.startswith("torch==")]
    stale = []
    REQUIREMENTS.mkdir(parents=True, exist_ok=True)
    for image in IMAGES:
        text = render(image, resolve(image, top_level(image), constraints))
        if args.check:
            if not image.requirements.exists() or image.requirements.read_text() != text:
                stale.append(image.requirements.name)
        else:
            image.requirements.write_text(text)
            print(f"{image.requirements.relative_to(ROOT)}: {text.count(chr(10)) - 2} pins")
    if stale:
        print(f"stale: {', '.join(stale)}; run .venv/bin/python images/pins.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
