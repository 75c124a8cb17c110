"""Repository scripts; a package only so that the GPU check's helpers run as `python -m scripts.gpu_check.NAME`."""
