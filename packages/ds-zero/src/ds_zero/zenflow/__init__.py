"""ZenFlow (``zero_optimization.zenflow``): the important gradient columns update every step on the
training device; the rest accumulate and update on the CPU every ``update_interval`` steps.

Note: [zenflow] Stages 1-2 with ``offload_optimizer.device: cpu``. Each call of the trainer's ``step``
is one ZenFlow step ``t`` (the engine runs with ``gradient_accumulation_steps`` 1; like DeepSpeed, which
sets its accumulation steps to ``update_interval``, each step's gradient is divided by
``update_interval``, so the accumulated gradient is the interval's mean). With ``W`` =
``full_warm_up_rounds``, ``U`` = ``update_interval`` and ``S`` = the resolved select interval:

* ``t < W`` (warm-up): an ordinary full step, the CPU Adam on this step's gradient.
* selection, at ``t == W`` and every ``t % S == 0`` after (``S`` 0: never again): per 2-D weight of
  shape ``(rows, cols)``, the ``max(1, int(cols * topk_ratio))`` columns ``w[:, j]`` whose gradient has
  the largest L1 norm in this step. Parameters that are not 2-D (biases, norms) count as wholly
  selected, as DeepSpeed updates them with the selective optimizer every step. At a selection the
  selected values are written back into the CPU masters, the new columns' fp32 values are taken from
  the masters, and the selective Adam's moments are zeroed (its step count runs on, as DeepSpeed's).
* every step ``t >= W``: the selected columns take one AdamW step (:mod:`.selective`) with this step's
  gradient, on the training device; the whole gradient shard is added to a CPU accumulator.
* an update boundary, ``(t + 1 - W) % U == 0`` or ``S and (t + 1) % S == 0`` (the interval before a
  re-selection is flushed): the CPU Adam (:mod:`.cpu_update`) steps the fp32 master shards with the
  accumulated gradient (clipped by its own global norm), with the bias corrections of step ``t + 1``
  (DeepSpeed passes ``step_id = micro_step + 1``); the masters are all-gathered into the model and
  the selected columns put back, so the CPU result lands only in unselected columns.
* ``overlap_step``: the CPU step of boundary ``b`` runs in a background thread while training goes on
  (gradients accumulate into a second buffer); boundary ``b + 1`` waits for it and publishes it before
  submitting its own, so unselected columns trail by one interval. Warm-up steps stay synchronous.
  A selection waits for the running step before it reads or writes the masters.

What differs from DeepSpeed 0.19.8, on purpose: columns are chosen per whole parameter (DeepSpeed
picks ``topk`` per data-parallel partition and never picks a column cut by a partition boundary, so
its choice depends on the world size); the selected columns keep fp32 values and moments (DeepSpeed
steps the bf16/fp16 weights in place); the overlapped CPU step keeps one set of Adam moments
(DeepSpeed's native worker alternates two sets between boundaries); ``update_interval: "auto"``
(adaptive) is refused. A step skipped for non-finite gradients is not a ZenFlow step.

Note: [zenflow checkpoint] A resumed run goes on as if unbroken. Each rank's optimizer file holds the
masters with the selected values written in (so ``zero_to_fp32`` gives the weights the model shows), the
CPU Adam state, and under ``zenflow``: the ZenFlow step, the selective step count, and per parameter
name the selected columns with their values, moments and the rank's own elements of the masters'
values there (a CPU step updates those too, and in Adam-with-L2 mode they feed its moments, so they go
back after the load, summed over the ranks' files). Saving runs no collective.
The interval's gradient sum rides in the slices as side state (Note [side state] in
ds_zero.sharded_state), so it reshards with the optimizer state; with ``overlap_step``, a CPU step
joined by the save but not yet published saves the model's own shard too, which the model shows again
after the load until the next boundary. Everything is keyed by parameter name or resharded, so a
ZenFlow checkpoint loads at another world size or stage 1/2. A checkpoint written without ZenFlow (or a
weights-only load) starts ZenFlow over: warm-up, then a fresh selection; a ZenFlow checkpoint loaded
without ZenFlow drops the interval's unapplied gradient sum, with a warning.
"""

from __future__ import annotations
