"""Stage-3 policy values: DeepSpeed's ``stage3_*`` knobs, and what each one does here.

Stage 3 is built on PyTorch's ``fully_shard`` (FSDP2): a *shard unit* is a submodule whose parameters
are gathered together before its forward and backward and released after them, and whose gradients
are reduce-scattered together when its backward ends. DeepSpeed's knobs map onto that as follows.

==================================  ==============================================================
DeepSpeed key                       meaning here
==================================  ==============================================================
stage3_prefetch_bucket_size         The most elements one gather moves: shard units are the
                                    largest submodules no bigger than this (and no bigger than
                                    ``reduce_bucket_size``, since a unit is also one
                                    reduce-scatter), and forward prefetch runs ahead by at most
                                    this many elements. 0 disables forward prefetch. With one
                                    rank, see Note [one rank] below.
stage3_param_persistence_threshold  Parameters with fewer elements stay whole on every rank (no
                                    gather in forward or backward); their gradients accumulate
                                    whole and are reduce-scattered once at the step, their
                                    optimizer state is sharded (ZeRO-1 for these small tensors),
                                    and they are re-gathered once after the step.
stage3_max_reuse_distance           A unit is kept gathered from its forward to its backward
                                    (gathered once per step instead of twice) when fewer than
                                    this many elements are gathered in between ...
stage3_max_live_parameters          ... and while the kept units total at most this many elements.
stage3_model_persistence_threshold  Caps the elements kept whole by the persistence threshold,
                                    counted in model order (DeepSpeed's order).
stage3_module_granularity_threshold Modules whose elements per layer beneath them are at most this
                                    become leaves (:mod:`ds_zero.stage3.leaf`): one unit each, no
                                    hooks inside. 0 turns it off.
leaf_module {classes, names,        Leaves named by class, module name or name suffix (the engine
name_suffixes}                      applies the section; ``deepspeed.utils.set_z3_leaf_modules``
                                    does the same from a script). A leaf is one unit whatever its
                                    size, so a mixture-of-experts block that routes tokens to
                                    different experts on different ranks gathers the same thing
                                    on every rank.
reduce_bucket_size                  Caps the unit size (see above).
overlap_comm                        FSDP2 always overlaps gathers and reductions with compute
                                    (separate streams on accelerators, async work on gloo);
                                    ``false`` does not serialise them. It still selects stage 2's
                                    synchronous reduction for the persistent parameters.
prescale_gradients,                 Not applied to unit gradients: FSDP2 averages in
gradient_predivide_factor           ``reduce_dtype`` and, for fp16/bf16 reductions, already divides
                                    partly before and partly after the sum (its own factors) for the
                                    same overflow reason. Persistent parameters follow them as at
                                    stage 2.
stage3_use_all_reduce_for_fetch_    Accepted, no effect: how a gather is carried out is FSDP2's
params, stage3_allgather_           (one all-gather per unit into one buffer).
sequential
sub_group_size                      Accepted, no effect: the optimizer steps each shard in place,
                                    with no fp32 staging buffer for sub-groups to bound.
offload_param / offload_optimizer   {device: cpu}: the fp32 shards (which are both the parameters'
                                    only persistent copy and the optimizer's masters), their
                                    gradients and the optimizer state live in CPU memory and the
                                    optimizer steps there (FSDP2's CPUOffloadPolicy). The two keys
                                    select the same placement, because the shard *is* the master.
                                    offload_param {device: nvme}: as cpu, and between uses each
                                    unit's shard is on NVMe (Note [parameter swapping] in
                                    :mod:`ds_zero.stage3.nvme_params`).
zero_hpz_partition_size             ZeRO++ hpZ (Note [hpZ]): after its forward a unit keeps a
                                    secondary shard over its group of this many consecutive ranks,
                                    so its backward gathers inside that group. 1: off.
==================================  ==============================================================

Note: [units] The unit rule (see :mod:`ds_zero.stage3.plan`) never looks at module types: it walks
the module tree from the root and makes a unit of every submodule that fits the size cap and whose
parameters are used by nothing outside it (tied and externally registered parameters go to the
smallest enclosing module that holds every user). The root is always a unit: it holds the rest.

Note: [hpZ] DeepSpeed's ZeRO++ hierarchical partitioning: besides its primary shard over all N
data-parallel ranks, each rank keeps a secondary shard of a unit's parameters over its group of
H = ``zero_hpz_partition_size`` consecutive ranks (ranks ``k*H .. k*H+H-1``, typically one node), so
the backward all-gather crosses only that group while the forward one spans all N; gradients are still
reduce-scattered over all N and the numbers are unchanged. Built as FSDP2's
``reshard_after_forward=H``: after forward a unit drops its gathered copy down to a 1/H slice (cut
from the copy it gathered, so no extra communication) and its backward gathers those slices inside
the group. Cost: between a unit's forward and its backward, each rank holds 1/H of the unit instead of
1/N. The slices die when the unit reshards after backward, and :meth:`Stage3Params.publish` drops any
left after the step, so a secondary shard never outlives the weights it was cut from. The root unit
and units kept gathered (``stage3_max_reuse_distance``) do not gather in backward and are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ds_zero.policy import DEFAULT_BUCKET_NUMEL, ZeroPolicy


@dataclass(frozen=True)
class Stage3Policy:
    """DeepSpeed's ``stage3_*`` values (defaults are DeepSpeed's). See the module docstring."""

    prefetch_bucket_numel: int = 50_000_000
    param_persistence_threshold: int = 100_000
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    gather_16bit_weights_on_model_save: bool = False
    model_persistence_threshold: int | None = None  # None: no cap (DeepSpeed's default, sys.maxsize)
    module_granularity_threshold: int = 0
    # Note [divergence]: before each unit's forward, ranks agree (one tiny collective on a side group)
    # on which module they are about to gather, so a rank taking another path fails with the module's
    # name instead of hanging in a mismatched gather. Costs one small CPU collective per unit call.
    detect_divergence: bool = True
    hpz_partition_size: int = 1
    """``zero_hpz_partition_size``: ranks in the secondary (intra-node) group; 1 is off (Note [hpZ])."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.hpz_partition_size, bool)
            or not isinstance(self.hpz_partition_size, int)
            or self.hpz_partition_size < 1
        ):
            raise ValueError(
                f"zero_optimization.zero_hpz_partition_size must be an integer >= 1, "
                f"got {self.hpz_partition_size!r}"
            )


@dataclass(frozen=True)
class Zero3Policy(ZeroPolicy):
    """A :class:`~ds_zero.policy.ZeroPolicy` with the stage-3 values (``stage`` defaults to 3)."""

    stage: int = 3
    stage3: Stage3Policy = field(default_factory=Stage3Policy)


def stage3_of(policy: ZeroPolicy) -> Stage3Policy:
    """The stage-3 values of ``policy`` (DeepSpeed's defaults for a plain :class:`ZeroPolicy`)."""
    return getattr(policy, "stage3", None) or Stage3Policy()


def hpz_group_size(policy: ZeroPolicy, *, world_size: int) -> int:
    """The secondary group size ``zero_hpz_partition_size`` asks for over ``world_size`` data-parallel
    ranks (Note [hpZ]); 1 when hpZ is off. An error naming the key when it does not divide the world."""
    size = stage3_of(policy).hpz_partition_size
    if size > 1 and world_size % size:
        raise ValueError(
            f"zero_optimization.zero_hpz_partition_size ({size}) must divide the data-parallel "
            f"world size ({world_size}): the ranks split into groups of that many consecutive ranks"
        )
    return size


def unit_cap(policy: ZeroPolicy, *, world_size: int, model_numel: int) -> int:
    """The most elements one shard unit may hold (see ``stage3_prefetch_bucket_size``).

    Note: [one rank] Separate units buy two things: a bound on what is gathered at once, and overlap
    of one unit's communication with another's compute. With one rank there is no communication to
    overlap, so when ``stage3_max_live_parameters`` allows the whole model gathered, the model is one
    unit: each extra unit would only add its hooks and copies to every step. Not with ``offload_param``:
    there the units bound what is in accelerator memory (cpu) or in CPU memory at all (nvme, Note
    [parameter swapping] in :mod:`ds_zero.stage3.nvme_params`), which is why the parameters were
    offloaded (ZeRO-Infinity on one accelerator is its main use).
    """
    s3 = stage3_of(policy)
    # FSDP2 units bound the gathered memory too: DeepSpeed's default, not Note [adaptive buckets]
    bucket = policy.reduce.bucket_numel if policy.reduce.bucket_numel is not None else DEFAULT_BUCKET_NUMEL
    cap = bucket if s3.prefetch_bucket_numel <= 0 else min(s3.prefetch_bucket_numel, bucket)
    if world_size == 1 and model_numel <= s3.max_live_parameters and policy.offload.param_device == "none":
        return max(cap, model_numel)
    return cap
