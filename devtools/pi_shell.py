"""An `ssh` stand-in that runs the remote command inside the emulated Raspberry Pi root.

    edgecnn bench model_int8.tflite --remote pi@emulated \\
        --ssh-command "python -m devtools.pi_shell" --offline

`edgecnn bench --remote` calls its ssh command as `CMD [-o OPT]... [-p PORT] HOST COMMAND`;
this one ignores the options and the host and runs COMMAND with `/bin/sh -c` as root in
the arm64 root of `devtools.pi_root` (default `$EDGECNN_PI_ROOT`), under qemu with a
Raspberry Pi 4's CPU and /proc/cpuinfo, stdin and stdout passed through, exit code kept.
So the remote path (probe, upload, venv, bench) runs on aarch64 Raspberry Pi OS without a
Pi. Needs root and a built root (scripts/pi_check.sh builds it); exit 255 with one line
otherwise, as ssh does when it cannot connect.
"""

from __future__ import annotations

import os
import subprocess
import sys

from devtools import pi_root


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("pi_shell: usage: pi_shell [-o OPT]... [-p PORT] HOST COMMAND", file=sys.stderr)
        return 255
    root = pi_root.default_root()
    problem = pi_root.emulation_problem()
    if problem or not pi_root.root_ready(root):
        print(f"pi_shell: connect to emulated Pi: Connection refused ({problem or 'no root at '}"
              f"{'' if problem else root})", file=sys.stderr)
        return 255
    cpuinfo = root.parent / f"{root.name}.cpuinfo"
    cpuinfo.write_text(pi_root.fake_cpuinfo(os.cpu_count() or 1))
    env = {"PATH": pi_root.BASE_ENV["PATH"], "HOME": "/root"}
    command = pi_root.root_command(root, ["/bin/sh", "-c", args[-1]], cwd="/root", env=env,
                                   cpuinfo=cpuinfo)
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
