"""The project's images, built for real with buildah from the repository's Dockerfiles, for `make images` and
`make e2e`: controller (also the dashboard), sandbox, and the CPU variants of infer and train.

No registry is reachable here, so every Dockerfile's `BASE_IMAGE` build argument points at a local base made
with `debootstrap --variant=minbase bookworm` (plus python3-venv, the python:3.11-slim images' content that
the Dockerfiles rely on); the Dockerfiles themselves are the ones users build. The CPU variants of
Dockerfile.infer and Dockerfile.train take the CPU pins (`REQUIREMENTS=images/requirements/mock-model.txt`,
every step's extras with torch's CPU build); pip finds torch==2.13.0+cpu in the machine's local wheel folder
(pip's find-links, as the Makefile uses it) or on the PyTorch CPU index, through a pip.conf mounted into the
build only (with the host's CA bundle), never baked into an image.

Everything is cached under ~/.cache/agentq-e2e: the base's root filesystem, buildah's layers, and each image
under a tag that is the hash of what it is built from, so an unchanged image is neither built nor imported
again. A code change rebuilds only the small project layer (the Dockerfiles keep dependencies apart).

    PYTHONPATH=tests .venv/bin/python -m e2e.images [--json] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentq-e2e"
BUILDAH_ROOT = CACHE / "buildah"
BUILDAH_RUNROOT = Path("/run/agentq-e2e-buildah")
REGISTRY = "localhost/agentq"
CPU_REQUIREMENTS = "images/requirements/mock-model.txt"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# The local stand-in for python:3.11-slim-bookworm (and, for the CPU variants, for the CUDA base): Debian's
# python3.11 with venv, `python` on PATH, CA certificates and useradd.
BASE_RECIPE = {"suite": "bookworm", "variant": "minbase", "mirror": "http://deb.debian.org/debian",
               "include": ["python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd"]}
SKIP = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str
    inputs: tuple[str, ...]  # what the image is made of: a change to any of these makes a new tag
    build_args: tuple[tuple[str, str], ...] = ()


PROJECT = ("pyproject.toml", "README.md", "agentq")
IMAGES = (
    ImageSpec("controller", "images/controller/Dockerfile", ("images/requirements/controller.txt", *PROJECT,
                                                             "controller")),
    ImageSpec("sandbox", "images/sandbox/Dockerfile", ("images/requirements/sandbox.txt", *PROJECT)),
    ImageSpec("infer", "Dockerfile.infer", (CPU_REQUIREMENTS, *PROJECT), (("REQUIREMENTS", CPU_REQUIREMENTS),)),
    ImageSpec("train", "Dockerfile.train", (CPU_REQUIREMENTS, *PROJECT), (("REQUIREMENTS", CPU_REQUIREMENTS),)),
)


@dataclass
class Built:
    name: str
    ref: str
    size_mb: float
    build_s: float  # 0 when the tag was already built
    cached: bool


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def buildah(*args: str, check: bool = True, timeout: float = 3600, quiet: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("buildah") is None:
        raise RuntimeError("cannot build images here: buildah is missing (apt-get install buildah)")
    cmd = ["nice", "-n", "10", "buildah", "--root", str(BUILDAH_ROOT / "storage"), "--runroot", str(BUILDAH_RUNROOT),
           "--storage-driver", "overlay", *args]
    done = subprocess.run(cmd, capture_output=quiet, text=True, timeout=timeout)
    if check and done.returncode != 0:
        tail = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:] if quiet else ""
        raise RuntimeError(f"buildah {' '.join(args[:2])} failed ({done.returncode}):\n{tail}")
    return done


def exists(ref: str) -> bool:
    return buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref, check=False).returncode == 0


def size_mb(ref: str) -> float:
    """The image's size: its layers uncompressed, as a node stores them."""
    manifest = json.loads(buildah("inspect", "--type", "image", "--format", "{{.Manifest}}", ref).stdout)
    return round(sum(layer["size"] for layer in manifest["layers"]) / 1e6, 1)


def digest(paths: tuple[str, ...] | list[Path], extra: Any = None) -> str:
    """A hash of the files under `paths` (names and contents, caches skipped) and `extra`."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for rel in paths:
        root = REPO / rel if isinstance(rel, str) else rel
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and not SKIP & set(p.parts) and p.suffix != ".pyc")
        for path in files:
            h.update(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path.name).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def base_image() -> Built:
    """The local Debian bookworm base, debootstrapped once per recipe."""
    ref = f"{REGISTRY}/base-bookworm:{digest([], BASE_RECIPE)}"
    if exists(ref):
        return Built("base", ref, size_mb(ref), 0.0, True)
    if shutil.which("debootstrap") is None:
        raise RuntimeError("cannot build the base image here: debootstrap is missing (apt-get install debootstrap)")
    start = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {BASE_RECIPE['suite']} ({BASE_RECIPE['variant']}) for {ref}")
        done = subprocess.run(["nice", "-n", "10", "debootstrap", f"--variant={BASE_RECIPE['variant']}",
                               f"--include={','.join(BASE_RECIPE['include'])}", BASE_RECIPE["suite"], str(rootfs),
                               BASE_RECIPE["mirror"]], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for path in (rootfs / junk).glob("*"):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir() and path.name != "partial":
                    shutil.rmtree(path)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", container, str(tarball), "/")
            buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env", "LANG=C.UTF-8", "--cmd", '["python3"]', container)
            buildah("commit", "--rm", container, ref)
        except BaseException:
            buildah("rm", container, check=False)
            raise
    took = round(time.monotonic() - start, 1)
    return Built("base", ref, size_mb(ref), took, False)


def _pip_conf(directory: Path) -> tuple[Path, list[str]]:
    """The pip.conf mounted into every build (and the volumes it refers to): torch's CPU wheel from the
    machine's local wheel folder when it has one, else from the PyTorch CPU index; the host's CA bundle."""
    volumes: list[str] = []
    lines = ["[global]"]
    links = os.environ.get("PIP_FIND_LINKS") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
    ).stdout.strip()
    if links and Path(links).is_dir():
        volumes += ["-v", f"{Path(links).resolve()}:/wheels:ro"]
        lines.append("find-links = /wheels")
    elif links:
        lines.append(f"find-links = {links}")
    else:
        lines.append(f"extra-index-url = {CPU_TORCH_INDEX}")
    if HOST_CA.exists():
        volumes += ["-v", f"{HOST_CA}:/etc/agentq-host-ca.crt:ro"]
        lines.append("cert = /etc/agentq-host-ca.crt")
    conf = directory / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf, ["-v", f"{conf}:/etc/pip.conf:ro", *volumes]


def build(spec: ImageSpec, base: Built) -> Built:
    args = dict(spec.build_args, BASE_IMAGE=base.ref)
    ref = f"{REGISTRY}/{spec.name}:{digest([spec.dockerfile, *spec.inputs], args)}"
    if exists(ref):
        return Built(spec.name, ref, size_mb(ref), 0.0, True)
    log(f"building {ref} from {spec.dockerfile}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentq-build-") as tmp:
        _, volumes = _pip_conf(Path(tmp))
        build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
        # --network host: pip reaches PyPI directly (no CNI network of buildah's own is ever set up).
        buildah("bud", "--layers", "--network", "host", "--runtime", shutil.which("runc") or "runc",
                *volumes, *build_args, "-f", str(REPO / spec.dockerfile), "-t", ref, str(REPO))
    return Built(spec.name, ref, size_mb(ref), round(time.monotonic() - start, 1), False)


def build_all(names: list[str] | None = None) -> list[Built]:
    base = base_image()
    built = [base, *(build(spec, base) for spec in IMAGES if not names or spec.name in names)]
    for image in built:
        for old in _superseded(buildah("images", "--format", "{{.Name}}:{{.Tag}}").stdout.split(), image.ref):
            buildah("rmi", old, check=False)  # its own small layers go; the shared dependency layers stay
    return built


def _superseded(refs: list[str], current: str) -> list[str]:
    """Other tags of `current`'s repository: earlier builds of the same image, which the cache need not keep."""
    repository = current.rsplit(":", 1)[0]
    return [ref for ref in refs if ref.rsplit(":", 1)[0] == repository and ref != current]


def pause_image(binary: Path) -> Built:
    """The pod sandbox image: the pause binary scripts/testenv.sh --node compiled from the Kubernetes source."""
    ref = f"{REGISTRY}/pause:{digest([binary])}"
    if not exists(ref):
        container = buildah("from", "scratch").stdout.strip()
        buildah("copy", container, str(binary), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        buildah("commit", "--rm", container, ref)
    return Built("pause", ref, size_mb(ref), 0.0, True)


def load(cluster: Any, built: list[Built]) -> float:
    """Import into the cluster's containerd what it lacks; returns seconds taken.

    buildah pushes into one OCI layout under the cache (a blob already there is not written again, though buildah
    gzips each layer anew to find out), and containerd imports a tar stream of just that image's blobs (it skips
    content and snapshots it already has, so only a changed layer is written and unpacked)."""
    start = time.monotonic()
    present = set(cluster.ctr("images", "ls", "-q").stdout.split())
    for image in built:
        old = _superseded(list(present), image.ref)
        if old:  # containerd drops the content nothing else refers to
            cluster.ctr("images", "rm", *old)
        if image.ref in present or image.name == "base":
            continue
        log(f"importing {image.ref} into containerd")
        buildah("push", "--disable-compression", image.ref, f"oci:{OCI_DIR}:{image.ref}")
        _import(cluster, image.ref)
        if image.ref not in cluster.ctr("images", "ls", "-q").stdout.split():
            raise RuntimeError(f"containerd does not list {image.ref} after importing it")
        _forget_superseded_blobs(image.ref)
    return round(time.monotonic() - start, 1)


OCI_DIR = CACHE / "oci"
REF_NAME = "org.opencontainers.image.ref.name"


def _blob(digest: str) -> Path:
    return OCI_DIR / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _descriptor(ref: str) -> dict[str, Any]:
    index = json.loads((OCI_DIR / "index.json").read_text())
    found = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) == ref]
    if not found:
        raise RuntimeError(f"{ref} is not in the OCI layout {OCI_DIR}")
    return found[-1]


def _digests(descriptor: dict[str, Any]) -> list[str]:
    """The blobs of one image: its manifest, its config and its layers."""
    manifest = json.loads(_blob(descriptor["digest"]).read_text())
    return [descriptor["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def _import(cluster: Any, ref: str) -> None:
    descriptor = _descriptor(ref)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="oci-") as tmp:
        layout = Path(tmp)
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
        (layout / "blobs" / "sha256").mkdir(parents=True)
        for digest in _digests(descriptor):
            os.link(_blob(digest), layout / "blobs" / "sha256" / digest.removeprefix("sha256:"))
        with subprocess.Popen(["tar", "-C", tmp, "-cf", "-", "."], stdout=subprocess.PIPE) as tar:
            done = cluster.ctr("images", "import", "-", timeout=1800, stdin=tar.stdout)
        if done.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"ctr images import {ref} failed: {done.stderr.strip()[-2000:]}")


def _forget_superseded_blobs(ref: str) -> None:
    """Earlier tags of `ref`'s image leave the OCI layout, with the blobs no remaining tag uses."""
    index_path = OCI_DIR / "index.json"
    index = json.loads(index_path.read_text())
    refs = [(m.get("annotations") or {}).get(REF_NAME, "") for m in index["manifests"]]
    old = set(_superseded(refs, ref))
    index["manifests"] = [m for m, r in zip(index["manifests"], refs, strict=True) if r not in old]
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(index_path)
    kept = {d for m in index["manifests"] for d in _digests(m)}
    for blob in (OCI_DIR / "blobs" / "sha256").iterdir():
        if f"sha256:{blob.name}" not in kept:
            blob.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the images with buildah (see tests/e2e/images.py).")
    known = [s.name for s in IMAGES]
    parser.add_argument("names", nargs="*", help=f"images to build (default: all of {', '.join(known)})")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(known)}")
    start = time.monotonic()
    built = build_all(args.names or None)
    result = {"images": [asdict(b) for b in built], "total_s": round(time.monotonic() - start, 1),
              "load_avg": list(os.getloadavg())}
    for b in built:
        log(f"{b.name:<10} {b.size_mb:>8.1f} MB  {'cached' if b.cached else f'built in {b.build_s}s'}  {b.ref}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
