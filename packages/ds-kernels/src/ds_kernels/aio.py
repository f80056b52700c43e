"""Asynchronous file I/O for NVMe offload: DeepSpeed's ``async_io`` op (``AsyncIOBuilder().load()``).

DeepSpeed binds libaio (or io_uring) in C++. Here a small thread pool issues ``os.pread`` /
``os.pwrite`` calls, which release the GIL, so ``intra_op_parallelism`` threads keep that many
requests of ``block_size`` bytes in flight on the device at once. Files are opened with ``O_DIRECT``
(no page-cache copy) when the buffer, the offset and the length are all aligned to
:data:`ALIGNMENT`; where the file system refuses ``O_DIRECT`` (tmpfs, some overlay mounts) the
handle falls back to buffered I/O once per path and logs it.

Note: [aligned buffers] ``O_DIRECT`` needs the buffer's address aligned to the device's logical block
size. Torch's CPU allocator aligns to 64 bytes only, so :func:`aligned_empty` carves an aligned view
out of a slightly larger byte tensor; ``new_cpu_locked_tensor`` returns such views (page-locked where
an accelerator can pin) and the NVMe swappers reuse them across steps.

DeepSpeed's ``aio_handle(block_size, queue_depth, single_submit, overlap_events, intra_op_parallelism)``
with ``sync_pread/sync_pwrite/async_pread/async_pwrite/pread/pwrite/read/write/wait`` and
``new_cpu_locked_tensor/free_cpu_locked_tensor`` is :class:`aio_handle`. ``queue_depth`` bounds the
requests queued per thread; ``single_submit`` and ``overlap_events`` are libaio submission details
with no counterpart in a thread pool (accepted, reported by the getters).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

logger = logging.getLogger(__name__)

ALIGNMENT = 4096  # covers 512-byte and 4 KiB logical blocks
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_no_direct: set[str] = set()  # directories whose file system refused O_DIRECT (logged once each)
_no_direct_lock = threading.Lock()


class AioError(OSError):
    """A read or write failed; the message names the file."""


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return (n + alignment - 1) // alignment * alignment


def aligned_empty(nbytes: int, *, pin: bool = False) -> torch.Tensor:
    """A uint8 CPU tensor of ``nbytes`` (rounded up to :data:`ALIGNMENT`) whose address is aligned
    (Note [aligned buffers]); pinned when asked and an accelerator can pin."""
    size = align_up(max(nbytes, 1))
    raw = torch.empty(size + ALIGNMENT, dtype=torch.uint8)
    if pin and torch.cuda.is_available():
        raw = raw.pin_memory()
    skip = (-raw.data_ptr()) % ALIGNMENT
    return raw[skip : skip + size]


def _is_direct_ok(t: torch.Tensor, offset: int) -> bool:
    nbytes = t.numel() * t.element_size()
    return t.data_ptr() % ALIGNMENT == 0 and offset % ALIGNMENT == 0 and nbytes % ALIGNMENT == 0


def _open(path: str, write: bool, direct: bool) -> tuple[int, bool]:
    """Open ``path``; with ``direct``, try O_DIRECT first and fall back (logged once per directory)."""
    flags = (os.O_WRONLY | os.O_CREAT) if write else os.O_RDONLY
    folder = os.path.dirname(os.path.abspath(path))
    if direct and _O_DIRECT and folder not in _no_direct:
        try:
            return os.open(path, flags | _O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            with _no_direct_lock:
                if folder not in _no_direct:
                    _no_direct.add(folder)
                    logger.warning(
                        "O_DIRECT is refused by the file system of %s: using buffered I/O there "
                        "(the page cache holds a second copy)",
                        folder,
                    )
    return os.open(path, flags, 0o600), False


def _as_bytes(t: torch.Tensor) -> memoryview:
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("aio buffers must be contiguous CPU tensors")
    return t.view(torch.uint8).reshape(-1).numpy().data  # the array's own buffer, as a memoryview


class AioEngine:
    """A pool of I/O threads moving whole tensors to and from files in ``block_size`` pieces."""

    def __init__(
        self,
        *,
        block_size: int = 1 << 20,
        queue_depth: int = 8,
        intra_op_parallelism: int = 1,
        use_direct: bool = True,
    ) -> None:
        if block_size <= 0 or queue_depth <= 0 or intra_op_parallelism <= 0:
            raise ValueError("aio block_size, queue_depth and intra_op_parallelism must be positive")
        self.block_size = align_up(block_size)
        self.queue_depth = queue_depth
        self.threads = intra_op_parallelism
        self.use_direct = use_direct
        self._pool = ThreadPoolExecutor(max_workers=intra_op_parallelism, thread_name_prefix="ds-aio")
        self._slots = threading.BoundedSemaphore(intra_op_parallelism * queue_depth)

    def _pieces(self, nbytes: int) -> list[tuple[int, int]]:
        # One request per block_size bytes (aligned, so O_DIRECT holds for each); the threads take them
        # in turn, at most queue_depth per thread queued at once.
        step = self.block_size
        return [(start, min(step, nbytes - start)) for start in range(0, nbytes, step)] or [(0, 0)]

    def submit(self, t: torch.Tensor, path: str, offset: int, *, write: bool) -> Future:
        """Start moving ``t``'s bytes to/from ``path`` at ``offset``; the future yields the byte count.
        The file is opened once per call; every block request shares the descriptor (pread/pwrite take
        their own offsets)."""
        view = _as_bytes(t)
        direct = self.use_direct and _is_direct_ok(t, offset)
        try:
            fd, _ = _open(path, write, direct)
        except OSError as exc:
            raise AioError(
                exc.errno, f"cannot open {path} for {'writing' if write else 'reading'}: {exc.strerror}", path
            ) from exc
        futures = []
        try:
            for start, length in self._pieces(len(view)):
                self._slots.acquire()  # queue_depth: bound the requests in flight
                fut = self._pool.submit(
                    self._io, fd, view[start : start + length], path, offset + start, write
                )
                fut.add_done_callback(lambda _f: self._slots.release())
                futures.append(fut)
        finally:
            out = _gather(futures)
            out.add_done_callback(lambda _f: os.close(fd))
        return out

    @staticmethod
    def _io(fd: int, view: memoryview, path: str, offset: int, write: bool) -> int:
        try:
            done = 0
            while done < len(view):
                n = (
                    os.pwrite(fd, view[done:], offset + done)
                    if write
                    else os.preadv(fd, [view[done:]], offset + done)
                )
                if n == 0:
                    raise AioError(
                        errno.EIO,
                        f"short {'write' if write else 'read'} of {path} at byte "
                        f"{offset + done} (file too short?)",
                        path,
                    )
                done += n
            return done
        except AioError:
            raise
        except OSError as exc:
            raise AioError(
                exc.errno, f"{'write to' if write else 'read from'} {path} failed: {exc.strerror}", path
            ) from exc

    def close(self) -> None:
        """Finish queued requests and stop the threads."""
        self._pool.shutdown(wait=True)


def _gather(futures: list[Future]) -> Future:
    """One future for several: the summed result, or the first exception."""
    out: Future = Future()
    if not futures:
        out.set_result(0)
        return out
    remaining = [len(futures)]
    lock = threading.Lock()

    def done(_f: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                out.set_exception(errors[0])
            else:
                out.set_result(sum(f.result() for f in futures))

    for f in futures:
        f.add_done_callback(done)
    return out


class aio_handle:  # noqa: N801 - DeepSpeed's class name
    """DeepSpeed's ``aio_handle`` (DeepNVMe): see the module doc for what each argument does here."""

    def __init__(
        self,
        block_size: int = 1024 * 1024,
        queue_depth: int = 128,
        single_submit: bool = False,
        overlap_events: bool = False,
        intra_op_parallelism: int = 1,
    ) -> None:
        self._engine = AioEngine(
            block_size=block_size, queue_depth=queue_depth, intra_op_parallelism=intra_op_parallelism
        )
        self._block_size, self._queue_depth = block_size, queue_depth
        self._single_submit, self._overlap_events = single_submit, overlap_events
        self._threads = intra_op_parallelism
        self._pending: list[Future] = []

    def get_block_size(self) -> int:
        return self._block_size

    def get_queue_depth(self) -> int:
        return self._queue_depth

    def get_single_submit(self) -> bool:
        return self._single_submit

    def get_overlap_events(self) -> bool:
        return self._overlap_events

    def get_intra_op_parallelism(self) -> int:
        return self._threads

    def get_alignment(self) -> int:
        return ALIGNMENT

    # --- synchronous --------------------------------------------------------------------------------
    def sync_pread(self, buffer: torch.Tensor, filename: str, file_offset: int = 0) -> int:
        """Read ``buffer``'s size from ``filename``; returns 1 (the completed op count) as DeepSpeed does."""
        self._engine.submit(buffer, str(filename), file_offset, write=False).result()
        return 1

    def sync_pwrite(self, buffer: torch.Tensor, filename: str, file_offset: int = 0) -> int:
        """Write ``buffer`` to ``filename``; returns 1."""
        self._engine.submit(buffer, str(filename), file_offset, write=True).result()
        return 1

    def read(self, buffer: torch.Tensor, filename: str, validate: bool = False, file_offset: int = 0) -> int:
        return self.sync_pread(buffer, filename, file_offset)

    def write(self, buffer: torch.Tensor, filename: str, validate: bool = False, file_offset: int = 0) -> int:
        return self.sync_pwrite(buffer, filename, file_offset)

    # --- asynchronous -------------------------------------------------------------------------------
    def async_pread(self, buffer: torch.Tensor, filename: str, file_offset: int = 0) -> int:
        """Start a read; :meth:`wait` completes it. Returns 0."""
        self._pending.append(self._engine.submit(buffer, str(filename), file_offset, write=False))
        return 0

    def async_pwrite(self, buffer: torch.Tensor, filename: str, file_offset: int = 0) -> int:
        """Start a write; :meth:`wait` completes it. Returns 0."""
        self._pending.append(self._engine.submit(buffer, str(filename), file_offset, write=True))
        return 0

    def pread(
        self,
        buffer: torch.Tensor,
        filename: str,
        validate: bool = False,
        async_op: bool = False,
        file_offset: int = 0,
        **kw: Any,
    ) -> int:
        """``async`` (DeepSpeed's keyword, passed as ``**{"async": True}``) starts it; else it completes."""
        if kw.pop("async", async_op):
            return self.async_pread(buffer, filename, file_offset)
        return self.sync_pread(buffer, filename, file_offset)

    def pwrite(
        self,
        buffer: torch.Tensor,
        filename: str,
        validate: bool = False,
        async_op: bool = False,
        file_offset: int = 0,
        **kw: Any,
    ) -> int:
        if kw.pop("async", async_op):
            return self.async_pwrite(buffer, filename, file_offset)
        return self.sync_pwrite(buffer, filename, file_offset)

    def wait(self) -> int:
        """Complete every started op; returns how many completed. The first failure is raised."""
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]
        return len(pending)

    # --- buffers ------------------------------------------------------------------------------------
    def new_cpu_locked_tensor(self, num_elem: int, example_tensor: torch.Tensor) -> torch.Tensor:
        """An aligned (and, with an accelerator, pinned) CPU tensor of ``num_elem`` elements of
        ``example_tensor``'s dtype (Note [aligned buffers])."""
        size = torch.empty((), dtype=example_tensor.dtype).element_size()
        return aligned_empty(num_elem * size, pin=True).view(example_tensor.dtype)[:num_elem]

    def free_cpu_locked_tensor(self, tensor: torch.Tensor) -> bool:
        """Nothing to release by hand: the buffer is freed with its last reference."""
        return True

    def is_pinned(self, buffer: torch.Tensor) -> bool:
        return buffer.data_ptr() % ALIGNMENT == 0

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine._pool.shutdown(wait=False)


def aio_read(
    buffer: torch.Tensor,
    filename: str,
    block_size: int = 1 << 20,
    queue_depth: int = 8,
    single_submit: bool = False,
    overlap_events: bool = False,
    validate: bool = False,
) -> int:
    """DeepSpeed's module-level ``aio_read``: one synchronous read."""
    return aio_handle(block_size, queue_depth, single_submit, overlap_events).sync_pread(buffer, filename)


def aio_write(
    buffer: torch.Tensor,
    filename: str,
    block_size: int = 1 << 20,
    queue_depth: int = 8,
    single_submit: bool = False,
    overlap_events: bool = False,
    validate: bool = False,
) -> int:
    """DeepSpeed's module-level ``aio_write``: one synchronous write."""
    return aio_handle(block_size, queue_depth, single_submit, overlap_events).sync_pwrite(buffer, filename)
