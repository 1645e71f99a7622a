"""Developer and CI tools of the repository; not part of the `edgecnn` package or its wheel.

The emulated Raspberry Pi (a Raspberry Pi OS bookworm arm64 root built with
debootstrap and run under qemu-user, as root) and the x86-vs-aarch64 check
that `.ci/pi_check` runs. Run from a checkout with the repository root on the
path (`PYTHONPATH=. python -m devtools.pi_check ...`, or scripts/pi_check.sh).
Torch-free; nothing in `edgecnn` imports it.
"""
