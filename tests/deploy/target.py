"""A disposable Debian 12 "VM" for the Ansible role: the cached debootstrapped root, booted by
systemd-nspawn (real systemd as PID 1) inside a network namespace of the test's own, reached over SSH.

Recipe and traps from FIELD-NOTES: `--register=no --keep-unit` (this host has no systemd as PID 1),
the guest's address set from the host, a veth with NAT so apt and pip inside reach the registries.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.deploy.hostsetup import extract_rootfs
from tests.deploy.netns import NetNS

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]


class Target:
    def __init__(self, workdir: Path, tarball: Path, name: str, subnet: int):
        self.workdir, self.tarball, self.name, self.subnet = workdir, tarball, name, subnet
        self.root = workdir / "root"
        self.key = workdir / "id_ed25519"
        self.netns = NetNS(name)
        self.address: str | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "nspawn.log"

    def boot(self, timeout: float = 60) -> "Target":
        extract_rootfs(self.tarball, self.root)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        ssh_dir = self.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(f"{self.key}.pub", ssh_dir / "authorized_keys")
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        (self.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n")
        self.netns.create()
        self.address = self.netns.add_uplink(self.subnet)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-b", "-M", self.name, "--register=no", "--keep-unit",
             f"--network-namespace-path={self.netns.path}", "--console=passive", "--resolv-conf=off"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited ({self.proc.returncode}):\n{self.log_path.read_text()}")
            if self._port_open(22) and self.ssh("true").returncode == 0:
                return self
            time.sleep(0.2)
        raise AssertionError(f"no SSH on the target after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.address, port), timeout=1):
                return True
        except OSError:
            return False

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", *SSH_OPTIONS, "-i", str(self.key), f"root@{self.address}", command],
                              capture_output=True, text=True, timeout=timeout)

    def inventory_line(self) -> str:
        return (f"{self.name} ansible_host={self.address} ansible_user=root ansible_ssh_private_key_file={self.key} "
                f"ansible_ssh_common_args='{' '.join(SSH_OPTIONS)}' ansible_python_interpreter=/usr/bin/python3")

    def destroy(self) -> None:
        """Power off, then remove the namespace, the NAT rule and the root; safe after a partial boot."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the guest's systemd to power off
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.netns.delete()
        if self.root.exists():
            # Nothing may still be mounted inside before the tree goes.
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(self.root))]
            for mount in sorted(mounts, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)


def inventory(path: Path, nodes: list[Target], fronts: list[Target] = (), node_vars: dict[str, str] | None = None,
              front_vars: dict[str, str] | None = None) -> Path:
    """An INI inventory: the groups site.yml deploys, cache_nodes and front, with variables per group."""
    lines = ["[cache_nodes]", *(t.inventory_line() for t in nodes), "", "[front]", *(t.inventory_line() for t in fronts)]
    for group, variables in (("cache_nodes", node_vars), ("front", front_vars)):
        if variables:
            lines += ["", f"[{group}:vars]", *(f"{key}={value}" for key, value in variables.items())]
    path.write_text("\n".join(lines) + "\n")
    return path
