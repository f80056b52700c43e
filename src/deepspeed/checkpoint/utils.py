"""`deepspeed.checkpoint.utils`: ``clone_tensors_for_torch_save`` (Accelerate calls it on a full state
dict before ``torch.save``)."""

from ds_engine.checkpoint.files import clone_tensors_for_torch_save

__all__ = ["clone_tensors_for_torch_save"]
