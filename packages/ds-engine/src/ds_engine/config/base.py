"""The one base every config section derives from.

Note: [config-base] Every section forbids unknown keys, accepts DeepSpeed's key (the alias) or our field
name, and turns each field's attribute docstring into its description, so the generated config reference
and the "did you mean" suggestions come from the same source as the validation. Forbidding is how unknown
keys are *found*: ``DeepSpeedConfig`` then accepts them with a warning, as DeepSpeed does, unless strict
mode is on (Note [unknown keys] in :mod:`ds_engine.config.unknown`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys are reported (Note [config-base]), DeepSpeed's keys are aliases."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        use_attribute_docstrings=True,
        arbitrary_types_allowed=False,
    )

    def as_deepspeed_dict(self) -> dict[str, Any]:
        """This section as DeepSpeed would spell it (aliases, defaults filled in)."""
        return self.model_dump(by_alias=True, mode="json")


class FeatureGate(ConfigModel):
    """A section for a DeepSpeed feature this project does not build yet.

    Its documented keys are validated; ``enabled: true`` is refused with a clear error by
    :func:`ds_engine.config.root.check_unsupported`, so the feature is never silently ignored.
    """

    enabled: bool = False
    """Turn the feature on. Only ``false`` is accepted until the feature is built."""
