"""The storage layer on local disk, S3 (moto server) and memory: atomic, exclusive, safe paths."""

import os
import threading
import uuid

import pytest

from repo.errors import StorageError
from repo.storage import TEMP_PREFIX, Storage, parse_storage_options


@pytest.fixture(params=["local", "s3", "memory"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    if request.param == "memory":
        return Storage(f"memory://drp-test-{uuid.uuid4().hex}")
    bucket = request.getfixturevalue("s3_bucket")
    return Storage(f"s3://{bucket}/root")


def test_round_trip_and_listing(storage):
    payload = bytes(range(256)) * 1000
    storage.put_bytes("a/b/c.bin", payload)
    assert storage.get_bytes("a/b/c.bin") == payload
    assert storage.size("a/b/c.bin") == len(payload)
    assert storage.exists("a/b/c.bin") and not storage.exists("a/b/missing")
    storage.put_bytes("a/x.txt", b"x")
    assert sorted(storage.walk_files("")) == [("a/b/c.bin", len(payload)), ("a/x.txt", 1)]
    assert storage.list_names("a") == ["x.txt"]
    assert storage.list_names("nowhere") == []
    storage.delete("a/x.txt")
    assert not storage.exists("a/x.txt")


def test_exclusive_create(storage):
    storage.put_bytes("k", b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        storage.put_bytes("k", b"second", exclusive=True)
    assert storage.get_bytes("k") == b"first"
    storage.put_bytes("k", b"third")  # overwrite is allowed when not exclusive
    assert storage.get_bytes("k") == b"third"


def test_exclusive_create_race_has_one_winner(storage):
    if storage.protocol == "memory":
        pytest.skip("the memory filesystem is a single-process test double")
    winners, losers = [], []

    def attempt(i):
        try:
            storage.put_bytes("race/key", str(i).encode(), exclusive=True)
            winners.append(i)
        except FileExistsError:
            losers.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert storage.get_bytes("race/key") == str(winners[0]).encode()


def test_local_writes_leave_no_temporary_files(tmp_path):
    storage = Storage(str(tmp_path))
    for i in range(20):
        storage.put_bytes(f"d/{i}", b"x" * i, exclusive=i % 2 == 0)
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith(TEMP_PREFIX)]


def test_errors_name_the_file(storage):
    with pytest.raises(StorageError, match="nothing/here.*no such file"):
        storage.get_bytes("nothing/here")


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\x00b", ""])
def test_paths_cannot_escape_the_root(storage, bad):
    with pytest.raises(StorageError, match="invalid repository path"):
        storage.put_bytes(bad, b"x")


def test_unreachable_s3_endpoint_is_a_clear_error(s3_endpoint):
    storage = Storage("s3://bucket/x", {"endpoint_url": "http://127.0.0.1:9", "max_attempts": 1})
    with pytest.raises(StorageError, match="s3://bucket/x/f.*cannot read"):
        storage.get_bytes("f")


def test_missing_bucket_is_a_clear_error(s3_endpoint):
    with pytest.raises(StorageError, match="s3://no-such-bucket-xyz/r/f"):
        Storage("s3://no-such-bucket-xyz/r").get_bytes("f")


def test_storage_options_parsing():
    opts = parse_storage_options(["endpoint_url=http://h:1", "anon=true", "max_attempts=2"])
    assert opts == {"endpoint_url": "http://h:1", "anon": True, "max_attempts": 2}
    with pytest.raises(StorageError, match="key=value"):
        parse_storage_options(["novalue"])
    with pytest.raises(StorageError, match="unsupported storage protocol"):
        Storage("ftp://host/x")


AUTH_MOTO = """
import logging, os, sys
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # moto then checks credentials like AWS does
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()
"""


def test_s3_permission_denied_is_a_clear_error():
    """Against an S3 server that checks credentials, unknown keys give 'permission denied'."""
    import subprocess
    import sys

    from repo.repository import Repository

    proc = subprocess.Popen(
        [sys.executable, "-c", AUTH_MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        endpoint = "http://" + proc.stdout.readline().strip()
        options = {"endpoint_url": endpoint, "key": "nobody", "secret": "wrong"}
        storage = Storage("s3://bucket/repo", options)
        with pytest.raises(
            StorageError, match=r"s3://bucket/repo/a/b: permission denied \(write\)"
        ):
            storage.put_bytes("a/b", b"x")
        with pytest.raises(StorageError, match="permission denied"):
            Repository("s3://bucket/repo", options)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
