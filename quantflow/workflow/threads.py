"""Process-level settings every TensorFlow- or OpenCV-running step applies first."""

from __future__ import annotations

import os


def configure_threads(threads: int, seed: int | None = None, tensorflow: bool = True) -> None:
    """Make TensorFlow and OpenCV use `threads` CPU threads (they ignore Snakemake's).

    Must run before the first TensorFlow op. On a GPU, memory growth is switched on so
    several jobs can share one device. With `seed`, Python, numpy and TF are seeded.
    `tensorflow=False` leaves TensorFlow unimported (a LiteRT-only step starts faster).
    """
    threads = max(1, int(threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _configure_opencv(threads)
    if not tensorflow:
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    if seed is not None:
        import keras

        keras.utils.set_random_seed(int(seed))


def _configure_opencv(threads: int) -> None:
    try:
        import cv2
    except ImportError:  # OpenCV is optional for the in-memory datasets
        return
    cv2.setNumThreads(threads)
