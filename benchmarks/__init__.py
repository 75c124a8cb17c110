"""fastrnn benchmark suite: fastrnn vs torch.nn (cuDNN on GPU, ATen/oneDNN on CPU), measured side
by side in one process.

Run ``python -m benchmarks --help``. The pytest-benchmark cases in ``test_layer_bench.py`` run with
``pytest benchmarks --benchmark-only`` and are not part of the normal test run (testpaths = tests).
"""
