"""Helpers of the one-command GPU check (scripts/gpu_check.sh): a case small enough for
compute-sanitizer (`sanitizer_case`) and where the peak GPU memory goes (`memory_peak`)."""
