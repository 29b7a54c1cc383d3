"""quantflow: quantize an image classifier and measure what each method costs.

The library is plain Python (numpy, TensorFlow/Keras, LiteRT); it knows nothing of
Snakemake. The workflow's scripts/ call into it.
"""

__version__ = "0.1.0"
