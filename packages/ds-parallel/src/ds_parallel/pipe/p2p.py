"""Activations and gradients between adjacent stages, with receives posted before they are needed.

Note: [early receives] Gloo (and NCCL) point-to-point is a rendezvous: data moves only once both the send
and the matching receive are posted. A receive posted when the schedule first needs the tensor therefore
waits a round trip through the peer's communication thread, which on a busy CPU waits for a core; a
receive posted one operation earlier has its data land while this stage computes. So :class:`StageLinks`
posts every receive as soon as its shapes are known:

- gradients never carry a header: stage ``s`` receives one gradient per floating-point tensor it sent, of
  that tensor's shape and dtype, so it posts micro-batch ``i``'s gradient receive right after sending
  micro-batch ``i``'s activation (the next stage sends gradients in the order it got activations);
- the first activation of a batch carries a header (count, dtypes, shapes; it is posted at the start of
  the batch); with static shapes (``PipelineModule(dynamic_shape=False)``, DeepSpeed's default) every
  later micro-batch of the batch has the same shapes, so the receive of micro-batch ``i + 1`` is posted
  as soon as micro-batch ``i`` arrived; with ``dynamic_shape=True`` every activation has its header, and
  the next header's receive is posted early instead. A static-shape stage whose output shapes change
  within a batch fails naming the stage and micro-batch (the receiver could not size its buffers).
  Batches may differ from one another (a short last batch, ``eval_batch`` at another micro-batch size):
  each batch's first activation carries its own header.

Sends are asynchronous (``isend``): an activation's send is completed once its gradient arrived (the next
stage received it before sending that gradient), everything else at the end of the batch.
Measured in benchmarks/pipeline_vs_torch_pipelining.py (Note [hand-written 1F1B] in
ds_parallel.pipe.schedule).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
]
HEADER = 64  # int64 slots: count, then (dtype, ndim, dims...) per tensor

Meta = tuple[tuple[tuple[int, ...], torch.dtype], ...]  # (shape, dtype) of each tensor of one transfer


def as_tuple(x: Any) -> tuple[torch.Tensor, ...]:
    """A stage's output as a tuple of tensors."""
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(x)
    raise TypeError(
        f"a pipeline stage must pass a tensor or a tuple of tensors to the next stage, got {type(x)}"
    )


def meta_of(tensors: tuple[torch.Tensor, ...]) -> Meta:
    """The shapes and dtypes a receiver needs to size its buffers for ``tensors``."""
    return tuple((tuple(t.shape), t.dtype) for t in tensors)


def _header(meta: Meta) -> torch.Tensor:
    vals = [len(meta)]
    for shape, dtype in meta:
        vals += [_DTYPES.index(dtype), len(shape), *shape]
    if len(vals) > HEADER:
        raise ValueError("too many or too high-dimensional tensors between pipeline stages")
    return torch.tensor(vals + [0] * (HEADER - len(vals)), dtype=torch.int64)


def _parse(header: torch.Tensor) -> Meta:
    vals = header.tolist()
    meta, at = [], 1
    for _ in range(vals[0]):
        dtype, ndim = _DTYPES[vals[at]], vals[at + 1]
        meta.append((tuple(vals[at + 2 : at + 2 + ndim]), dtype))
        at += 2 + ndim
    return tuple(meta)


def send(tensors: tuple[torch.Tensor, ...], dst: int, works: list[Any], header: bool) -> None:
    """Send ``tensors`` (after their header, with ``header``) to global rank ``dst`` without waiting;
    the pending sends (and the buffers they read) go to ``works``."""
    if header:
        head = _header(meta_of(tensors))
        works.append((dist.isend(head, dst), head))
    for t in tensors:
        t = t.detach().contiguous()
        works.append((dist.isend(t, dst), t))


def wait_all(works: list[Any]) -> None:
    """Complete every pending send."""
    for work, _buf in works:
        work.wait()
    works.clear()


class Incoming:
    """One transfer from global rank ``src``, posted now: its tensors when ``meta`` is known, else its
    header (the tensors are posted when the header has arrived)."""

    def __init__(self, src: int, meta: Meta | None) -> None:
        self.src = src
        self._header: torch.Tensor | None = None
        self._header_work: Any = None
        self._bufs: list[torch.Tensor] = []
        self._works: list[Any] = []
        self.meta = meta
        if meta is None:
            self._header = torch.empty(HEADER, dtype=torch.int64)
            self._header_work = dist.irecv(self._header, src)
        else:
            self._post(meta)

    def _post(self, meta: Meta) -> None:
        self._bufs = [torch.empty(shape, dtype=dtype) for shape, dtype in meta]
        self._works = [dist.irecv(b, self.src) for b in self._bufs]

    def wait(self) -> tuple[torch.Tensor, ...]:
        """The received tensors (blocks until they are here)."""
        if self.meta is None:
            assert self._header is not None  # posted in __init__ when meta was unknown
            self._header_work.wait()
            self.meta = _parse(self._header)
            self._post(self.meta)
        for work in self._works:
            work.wait()
        return tuple(self._bufs)


class StageLinks:
    """One batch's transfers of one stage: activations from ``prev`` and to ``nxt``, and with ``train``
    gradients back, every receive posted early (Note [early receives]). ``prev``/``nxt`` are global ranks,
    None at the first/last stage."""

    def __init__(
        self, prev: int | None, nxt: int | None, micro_batches: int, train: bool, dynamic_shape: bool
    ) -> None:
        self.prev, self.nxt = prev, nxt
        self.micro_batches, self.train, self.dynamic = micro_batches, train, dynamic_shape
        self._acts: dict[int, Incoming] = {}
        self._grads: dict[int, Incoming] = {}
        self._act_sends: dict[int, list[Any]] = {}
        self._other_sends: list[Any] = []
        self._sent_meta: Meta | None = None  # the batch's first activation's
        if prev is not None and micro_batches > 0:
            self._acts[0] = Incoming(prev, None)  # the batch's first activation comes with its header

    def activation(self, mb: int) -> tuple[torch.Tensor, ...]:
        """Micro-batch ``mb``'s activation from the previous stage; posts the next one's receive."""
        assert self.prev is not None  # only stages after the first receive activations
        incoming = self._acts.pop(mb)
        got = incoming.wait()
        if mb + 1 < self.micro_batches:
            self._acts[mb + 1] = Incoming(self.prev, None if self.dynamic else incoming.meta)
        return got

    def send_activation(self, mb: int, tensors: tuple[torch.Tensor, ...]) -> None:
        """Send micro-batch ``mb``'s output to the next stage; in training, post its gradient's receive."""
        assert self.nxt is not None  # only stages before the last send activations
        meta = meta_of(tensors)
        header = self.dynamic or self._sent_meta is None
        if self._sent_meta is None:
            self._sent_meta = meta
        elif not self.dynamic and meta != self._sent_meta:
            raise RuntimeError(
                f"its output {_show(meta)} differs from this batch's first micro-batch's "
                f"{_show(self._sent_meta)}, which sized the next stage's receives; pass "
                "PipelineModule(dynamic_shape=True) for shapes that change between micro-batches"
            )
        works: list[Any] = []
        send(tensors, self.nxt, works, header=header)
        self._act_sends[mb] = works
        if self.train:
            floats = tuple((s, d) for s, d in meta if d.is_floating_point)
            self._grads[mb] = Incoming(self.nxt, floats)

    def gradients(self, mb: int) -> tuple[torch.Tensor, ...]:
        """The next stage's gradients of micro-batch ``mb``'s floating-point outputs."""
        got = self._grads.pop(mb).wait()
        wait_all(self._act_sends.pop(mb))  # the next stage had it before it sent the gradient
        return got

    def send_gradients(self, tensors: tuple[torch.Tensor, ...]) -> None:
        """Send the gradients of this stage's floating-point inputs to the previous stage (no header:
        it knows their shapes, Note [early receives])."""
        assert self.prev is not None  # only stages after the first send gradients
        send(tensors, self.prev, self._other_sends, header=False)

    def finish(self) -> None:
        """Complete every send of the batch."""
        for works in self._act_sends.values():
            wait_all(works)
        self._act_sends.clear()
        wait_all(self._other_sends)


def _show(meta: Meta) -> str:
    return "[" + ", ".join(f"{tuple(s)} {str(d).removeprefix('torch.')}" for s, d in meta) + "]"
