"""Registering Ulysses with transformers: checks, the mesh, and the ``ALL_ATTENTION_FUNCTIONS`` entry."""

from __future__ import annotations

from typing import Any

from ds_parallel.ulysses.hf_attention import UNWRAPPABLE, SequenceParallelConfigError, check_heads

_ORIGINALS: dict[str, Any] = {}
"""Core attention functions replaced by :func:`register`, by name (what :func:`unregister` restores)."""


def _model_config(model_name_or_path: Any) -> Any:
    if hasattr(model_name_or_path, "config"):
        return model_name_or_path.config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_name_or_path)


def _core_function(name: str, model_impl: str | None) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if model_impl is not None and model_impl != name:
        raise SequenceParallelConfigError(
            f"core_attn_implementation={name!r} differs from the model's attn_implementation={model_impl!r}; "
            "set both to the same value so the wrapper sits on the path the model calls"
        )
    if name in UNWRAPPABLE:
        raise SequenceParallelConfigError(
            f"attn_implementation {name!r} cannot be wrapped for Ulysses sequence parallelism: it needs a full "
            "[seq, seq] attention mask; use 'sdpa', 'flex_attention' or a flash attention kernel"
        )
    if name not in ALL_ATTENTION_FUNCTIONS and name not in _ORIGINALS:
        raise SequenceParallelConfigError(
            f"{name!r} is not an attention implementation transformers knows; the "
            f"choices are {sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())}"
        )
    return _ORIGINALS.get(name) or ALL_ATTENTION_FUNCTIONS[name]


def register(
    cls: type,
    *,
    model_name_or_path: Any,
    core_attn_implementation: str,
    sequence_parallel_size: int,
    micro_batch_size: int,
    seq_length: int | None,
    seq_length_is_variable: bool,
    disable_in_eval: bool,
) -> Any:
    """See :meth:`UlyssesSPAttentionHF.register_with_transformers`."""
    if sequence_parallel_size == 1:
        return None
    if not seq_length_is_variable:
        if seq_length is None:
            raise SequenceParallelConfigError("seq_length is required when seq_length_is_variable=False")
        if seq_length % sequence_parallel_size:
            raise SequenceParallelConfigError(
                f"seq_length {seq_length} does not split over sequence_parallel_size {sequence_parallel_size}"
            )
    config = _model_config(model_name_or_path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads, kv_heads = (
        text.num_attention_heads,
        getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
    )
    check_heads(heads, kv_heads, sequence_parallel_size)
    fixed_length = None if seq_length_is_variable else seq_length  # an int then (checked above)
    core = _core_function(core_attn_implementation, getattr(config, "_attn_implementation", None))

    from ds_parallel import sp_state

    sp_state.initialize_sequence_parallel(sequence_parallel_size)  # raises if the world does not divide
    uattn = cls(
        attn=core,
        batch_size=micro_batch_size,
        attn_head_count=heads,
        attn_head_size=getattr(text, "head_dim", None) or text.hidden_size // heads,
        kv_head_count=kv_heads,
        num_hidden_layers=text.num_hidden_layers,
        process_group=sp_state.get_sequence_parallel_group(),
        seq_length_is_variable=seq_length_is_variable,
        local_seq_length=None if fixed_length is None else fixed_length // sequence_parallel_size,
        global_seq_length=fixed_length,
        disable_in_eval=disable_in_eval,
    )
    uattn.core_attn_implementation = core_attn_implementation

    def ulysses_attention(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any
    ) -> Any:
        return uattn(module, query, key, value, attention_mask, *args, **kwargs)

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _ORIGINALS.setdefault(core_attn_implementation, core)
    ALL_ATTENTION_FUNCTIONS[core_attn_implementation] = ulysses_attention
    return sp_state


def unregister(core_attn_implementation: str) -> None:
    """Put the original core function back under its name (tests run a plain model afterwards)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = _ORIGINALS.pop(core_attn_implementation, None)
    if original is not None:
        ALL_ATTENTION_FUNCTIONS[core_attn_implementation] = original
