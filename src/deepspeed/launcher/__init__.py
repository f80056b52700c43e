"""DeepSpeed's ``deepspeed.launcher`` package path; the launcher lives in :mod:`ds_launch`."""
