"""ds_kernels.aio: the thread-pool O_DIRECT engine and DeepSpeed's aio_handle API on top of it."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest
import torch

from ds_kernels import aio
from ds_kernels.op_builder import AsyncIOBuilder


def _handle(**kw):
    # reached the way DeepNVMe clients reach it
    return (
        AsyncIOBuilder()
        .load()
        .aio_handle(
            **{
                "block_size": 4096,
                "queue_depth": 4,
                "single_submit": False,
                "overlap_events": True,
                "intra_op_parallelism": 3,
                **kw,
            }
        )
    )


def test_builder_is_compatible_and_loads_the_engine():
    assert AsyncIOBuilder().is_compatible()
    assert AsyncIOBuilder().load() is aio


def test_sync_and_async_round_trip_on_disk(tmp_path):
    h = _handle()
    assert (h.get_block_size(), h.get_queue_depth(), h.get_intra_op_parallelism()) == (4096, 4, 3)
    src = h.new_cpu_locked_tensor(50_000, torch.empty(0, dtype=torch.float32))
    assert src.data_ptr() % h.get_alignment() == 0 and src.numel() == 50_000
    src.copy_(torch.randn(50_000))
    path = str(tmp_path / "t.bin")
    assert h.sync_pwrite(src, path) == 1
    assert os.path.getsize(path) == src.numel() * 4
    back = torch.empty_like(src)
    assert h.sync_pread(back, path) == 1
    assert torch.equal(back, src)
    # several async ops, completed by one wait; an unaligned buffer takes the buffered path
    other = torch.arange(1000, dtype=torch.int64)
    h.async_pwrite(src, str(tmp_path / "a.bin"))
    h.async_pwrite(other, str(tmp_path / "b.bin"))
    assert h.wait() == 2
    a, b = torch.zeros_like(src), torch.zeros_like(other)
    h.async_pread(a, str(tmp_path / "a.bin"))
    h.async_pread(b, str(tmp_path / "b.bin"))
    assert h.wait() == 2
    assert torch.equal(a, src) and torch.equal(b, other)
    assert h.free_cpu_locked_tensor(src)


def test_direct_io_is_used_on_the_disk(tmp_path):
    fd, direct = aio._open(str(tmp_path / "d.bin"), True, True)
    os.close(fd)
    assert direct, "the real disk supports O_DIRECT: the engine must use it"
    buf = aio.aligned_empty(3 * aio.ALIGNMENT)
    assert aio._is_direct_ok(buf, 0) and not aio._is_direct_ok(buf[1:], 0)


@pytest.mark.faults
def test_a_failed_read_names_the_file(tmp_path):
    h = _handle()
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(aio.AioError, match="short.bin"):
        h.sync_pread(torch.empty(8192, dtype=torch.uint8), str(path))
    with pytest.raises(aio.AioError, match="missing.bin"):  # at the call, as the file cannot be opened
        h.async_pread(torch.empty(10, dtype=torch.uint8), str(tmp_path / "missing.bin"))
        h.wait()


def test_buffered_fallback_where_o_direct_is_refused(tmp_path, caplog):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        try:
            os.close(os.open(str(mnt / "probe"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
            pytest.skip("this kernel's tmpfs accepts O_DIRECT (6.6+): no file system here refuses it")
        except OSError:
            pass
        h = _handle()
        buf = aio.aligned_empty(8192)
        buf.copy_(torch.arange(8192) % 251)
        with caplog.at_level(logging.WARNING, logger="ds_kernels.aio"):
            h.sync_pwrite(buf, str(mnt / "x.bin"))
        assert any(
            "O_DIRECT is refused" in r.getMessage() and str(mnt) in r.getMessage() for r in caplog.records
        )
        back = aio.aligned_empty(8192)
        h.sync_pread(back, str(mnt / "x.bin"))
        assert torch.equal(back, buf)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
