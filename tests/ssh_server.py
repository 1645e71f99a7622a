"""A throwaway OpenSSH server on 127.0.0.1 for tests: its own host key, client key and config.

    with ssh_server(tmp_path) as server:      # or server = start(...); server.stop()
        subprocess.run([*server.ssh_command, *server.destination_args, "true"])

`server.ssh_command` is ("ssh", "-F", CONFIG): a client config that names the
test's key and known_hosts file, so nothing of ~/.ssh is read or changed.
`unavailable()` says in one line why sshd cannot run here (None when it can).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def unavailable() -> str | None:
    """Why an sshd cannot be started here, or None."""
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not Path(tool).exists():
            return "openssh-server/openssh-client not installed (apt-get install openssh-server)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    port: int
    user: str
    ssh_command: tuple[str, ...]
    process: subprocess.Popen
    log: Path

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(directory: Path) -> Server:
    """Keys, configs and an sshd in the foreground on a free port; waits until it answers.

    Raises RuntimeError with the reason (first lines of sshd's log) when it does not start.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(directory / name)], check=True, capture_output=True)
    authorized = directory / "authorized_keys"
    authorized.write_text((directory / "client_key.pub").read_text())
    os.chmod(authorized, 0o600)
    port, user = _free_port(), getpass.getuser()
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {directory / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nPrintMotd no\n"
        "AcceptEnv LANG\nSubsystem sftp internal-sftp\n")
    log = directory / "sshd.log"
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(log, "w"))  # noqa: SIM115 - closed with the process
    known = directory / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(directory / 'host_key.pub').read_text()}")
    client = directory / "ssh_config"
    client.write_text(f"Host *\n  IdentityFile {directory / 'client_key'}\n"
                      "  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
                      "  LogLevel ERROR\n")
    server = Server(port, user, ("ssh", "-F", str(client)), process, log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        probe = subprocess.run([*server.ssh_command, "-o", "BatchMode=yes", "-p", str(port),
                                f"{user}@127.0.0.1", "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return server
        time.sleep(0.3)
    server.stop()
    reason = " | ".join(log.read_text(errors="replace").strip().splitlines()[:2])
    raise RuntimeError(f"sshd did not start: {reason or 'no answer on port ' + str(port)}")


@contextlib.contextmanager
def ssh_server(directory: Path) -> Iterator[Server]:
    server = start(directory)
    try:
        yield server
    finally:
        server.stop()
