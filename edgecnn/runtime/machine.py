"""Describe the machine a benchmark ran on, so a latency number can be reproduced.

Reads only files and package metadata (never imports a runtime), so it works
the same on a workstation and on a Raspberry Pi.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

#: Distributions whose versions matter for a latency number.
RUNTIME_PACKAGES = ("edgecnn", "numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime",
                    "torch")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13", "Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)")."""
    cpuinfo = _read("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    board = _read("/proc/device-tree/model").strip("\x00\n ")
    name = fields.get("model name") or fields.get("Hardware") or fields.get("cpu model")
    if not name and fields.get("CPU part"):
        name = _ARM_PARTS.get(fields["CPU part"].lower(), f"ARM part {fields['CPU part']}")
    name = name or platform.processor() or platform.machine()
    return f"{board} ({name})" if board and board not in name else name


#: A few ARM cores seen on single-board computers (/proc/cpuinfo "CPU part").
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
              "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}


def os_name() -> str:
    """PRETTY_NAME from /etc/os-release when present (e.g. Debian bookworm), else platform."""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return platform.platform()


def package_versions(names: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str]:
    """Installed versions of the runtime packages (absent ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def board_model() -> str | None:
    """The board's name from the device tree ("Raspberry Pi 4 Model B Rev 1.4"), None elsewhere."""
    return _read("/proc/device-tree/model").strip("\x00\n ") or None


def cpu_governor() -> str | None:
    """cpu0's cpufreq scaling governor ("ondemand", "performance"), None when unreadable."""
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip() or None


def cpu_temperature_c() -> float | None:
    """The SoC temperature in degrees Celsius (thermal_zone0, millidegrees in the file)."""
    text = _read("/sys/class/thermal/thermal_zone0/temp").strip()
    try:
        return int(text) / 1000.0
    except ValueError:
        return None


def describe_machine() -> dict:
    """Board, CPU, cores, governor, OS, Python and runtime versions, as recorded in bench JSON.

    `board` and `governor` are None where the files are not readable (VMs, containers).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "board": board_model(),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "governor": cpu_governor(),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "packages": package_versions(),
    }
