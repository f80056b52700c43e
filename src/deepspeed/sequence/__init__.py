"""`deepspeed.sequence`: Ulysses sequence parallelism (ds_parallel.ulysses)."""
