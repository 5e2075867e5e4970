"""The package's Lua scripts are byte-for-byte the protocol's (relock/src/scripts)."""

from pathlib import Path

from relock_redis import _protocol

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "relock" / "src" / "scripts"
COPIES = Path(_protocol.__file__).resolve().parent / "scripts"


def test_the_packaged_scripts_are_the_protocol_s_scripts_byte_for_byte() -> None:
    sources = {path.name: path.read_bytes() for path in SOURCE.glob("*.lua")}
    copies = {path.name: path.read_bytes() for path in COPIES.glob("*.lua")}
    assert sources, f"no scripts found in {SOURCE}: run the tests from a clone of the repository"
    assert sorted(copies) == sorted(sources), (
        "the package's scripts are not the protocol's: run `python python/sync_scripts.py`"
    )
    drifted = [name for name in sources if copies[name] != sources[name]]
    assert not drifted, (
        f"{drifted} differ from relock/src/scripts: run `python python/sync_scripts.py`"
    )


def test_the_client_runs_the_scripts_it_ships() -> None:
    for script in (_protocol.ACQUIRE, _protocol.RELEASE, _protocol.RENEW,
                   _protocol.FORCE_RELEASE, _protocol.INSPECT):
        assert script.source == (SOURCE / f"{script.name}.lua").read_bytes()
