"""Copies the protocol's Lua scripts from relock/src/scripts/ into the package.

The scripts are the protocol shared with the Rust crate; the package ships byte-for-byte copies
so that an installed wheel needs no repository. Run this after changing a script; the test
``tests/test_scripts.py`` fails while a copy differs from its source.

    python python/sync_scripts.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "relock" / "src" / "scripts"
TARGET = HERE / "relock_redis" / "scripts"


def main() -> None:
    TARGET.mkdir(exist_ok=True)
    sources = sorted(SOURCE.glob("*.lua"))
    if not sources:
        raise SystemExit(f"no .lua files in {SOURCE}")
    for stale in TARGET.glob("*.lua"):
        if not (SOURCE / stale.name).exists():
            stale.unlink()
    for source in sources:
        shutil.copyfile(source, TARGET / source.name)
        print(f"{source.relative_to(HERE.parent)} -> {(TARGET / source.name).relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
