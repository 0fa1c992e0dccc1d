"""Size and time of a fresh install of distill, as README's install command makes it.

    python benchmarks/install_size.py HEAD~1 HEAD        # compare two commits, in order
    python benchmarks/install_size.py HEAD --extras ""   # without the dev extra

For each git ref: the ref's files (``git archive``) go to a temporary folder, a new virtual
environment is made there and ``pip install -e '.[<extras>]'`` runs in it (README's command);
the table gives the install's wall time, the environment's size on disk and its number of
packages. Everything is deleted afterwards. pip's cache and this machine's local wheels make
the second install of the same files faster than a cold one: compare refs within one run,
and run the slowest (the first) twice if the order matters.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symbolic links not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(ref: str, extras: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        source, venv = Path(tmp) / "src", Path(tmp) / "venv"
        source.mkdir()
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        spec = f".[{extras}]" if extras else "."
        start = time.perf_counter()
        install = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "-e", spec],
            cwd=source, capture_output=True, text=True,
        )  # fmt: skip
        if install.returncode:
            raise SystemExit(f"pip install of {ref} failed:\n{install.stderr[-3000:]}")
        seconds = time.perf_counter() - start
        listed = subprocess.run(
            [str(venv / "bin" / "pip"), "list", "--format=freeze"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return {
            "ref": ref,
            "seconds": seconds,
            "bytes": folder_size(venv),
            "packages": len(listed.stdout.splitlines()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="+", help="git refs to install, in this order")
    parser.add_argument("--extras", default="dev", help="extras to install ('' for none)")
    args = parser.parse_args()
    rows = [measure(ref, args.extras) for ref in args.refs]
    print("| ref | extras | install wall | venv size | packages |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        size = row["bytes"] / 2**30
        print(f"| {row['ref']} | {args.extras or '-'} | {row['seconds']:.0f} s | {size:.2f} GiB "
              f"| {row['packages']} |")  # fmt: skip


if __name__ == "__main__":
    main()
