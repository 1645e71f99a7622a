"""The artifact manifest: sha256 and size of every file `export --int8` wrote.

report.json's "manifest" maps each file's path (relative to the report's
folder) to {"sha256", "size_bytes"}. `validate` and `bench` print the sha256
of what they ran and, given `--manifest report.json`, refuse a file whose
bytes are not the ones exported (a damaged copy, a swapped file). Torch-free.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgecnn.config import loads
from edgecnn.errors import EdgecnnError, ParameterError

#: report.json is small; anything beyond this is not one.
MAX_REPORT_BYTES = 64 * 2**20


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise EdgecnnError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def read_manifest(report: Path) -> dict[Path, dict]:
    """{absolute path: entry} from a report.json; one-line errors naming the file."""
    report = Path(report)
    if not report.is_file():
        raise ParameterError("manifest", f"{report}: file not found")
    if report.stat().st_size > MAX_REPORT_BYTES:
        raise ParameterError("manifest", f"{report}: larger than a report.json can be")
    data = loads(report.read_bytes(), str(report))
    entries = data.get("manifest") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ParameterError("manifest", f"{report}: no 'manifest' entry (written by "
                                         "`edgecnn export --int8`)")
    result = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or len(entry["sha256"]) != 64 or not isinstance(entry.get("size_bytes"), int):
            raise ParameterError("manifest", f"{report}: entry {name!r} needs sha256 (64 "
                                             "hex digits) and size_bytes")
        result[(report.parent / name).resolve()] = entry
    return result


def verify(paths: list[Path], report: Path) -> dict[Path, str]:
    """Check every file against the manifest; return {path: sha256}."""
    entries = read_manifest(report)
    by_name: dict[str, list[Path]] = {}
    for known in entries:
        by_name.setdefault(known.name, []).append(known)
    digests = {}
    for path in paths:
        path = Path(path)
        key = path.resolve()
        if key not in entries:
            same = by_name.get(path.name, [])
            if len(same) != 1:
                raise EdgecnnError(f"{path}: not in the manifest {report}")
            key = same[0]
        entry = entries[key]
        digest = sha256_file(path)
        if path.stat().st_size != entry["size_bytes"] or digest != entry["sha256"]:
            raise EdgecnnError(f"{path}: sha256 {digest[:16]}... ({path.stat().st_size} bytes) "
                               f"is not the exported {entry['sha256'][:16]}... "
                               f"({entry['size_bytes']} bytes) of {report}")
        digests[path] = digest
    return digests
