"""The example scripts (not part of the fastrnn package). `examples.charlm` holds the char-LM model
and text loader that the demo (`char_lm.py`) trains and the benchmarks' char-LM cases time."""
