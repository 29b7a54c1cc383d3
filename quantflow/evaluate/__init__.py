"""Running a model variant over a test set: predictions, accuracy metrics, size, latency.

Accuracy and timing are separate measurements (and separate workflow jobs): accuracy runs
over every test image in batches of `batch_size` and may share the machine; latency
(:func:`measure_latency`) times `latency_images` images one at a time (the median ms per
image at batch 1) and `latency_batches` batches of `batch_size` (the median ms per image
batched), after a warm-up, and is meant to run with nothing else on the cores. TFLite models run in LiteRT.
"""
