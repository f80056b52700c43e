"""`deepspeed.runtime.sequence_parallel`: Ulysses/ALST (ds_parallel.ulysses) and its mpu (ds_parallel.sp_state)."""
