"""Run by test_strategy.py in a fresh process (logical devices are made before TensorFlow
starts): fine-tune a tiny MobileNet and train FAT thresholds on it under the strategy
`distribute` config gives, print the results as JSON on the last line.

    python replicas_job.py '{"strategy": "auto", "logical_cpus": 2}' train,fat
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from quantflow.workflow.threads import configure_threads  # noqa: E402

distribute, parts = json.loads(sys.argv[1]), sys.argv[2].split(",")
configure_threads(2, 7)
from quantflow.distribute import strategy as dist  # noqa: E402

dist.configure_devices(distribute)
strategy = dist.make_strategy(distribute)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from quantflow.models.finetune import fine_tune  # noqa: E402
from quantflow.models.tiny_mobilenet import tiny_mobilenet  # noqa: E402
from quantflow.quant.calibrate import alpha_bounds, calibrate  # noqa: E402
from quantflow.quant.fat.train import train_thresholds  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402

rng = np.random.default_rng(0)
labels = rng.integers(0, 4, 512)
yy, xx = np.mgrid[0:28, 0:28]
stripes = np.stack([np.sin(yy / 2.0), np.sin(xx / 2.0), np.sin((yy + xx) / 2.0), 0 * yy])
images = (128 + 80 * stripes[labels] + rng.normal(0, 20, (512, 28, 28))).clip(0, 255)
images = images[..., None].astype(np.float32)
train = tf.data.Dataset.from_tensor_slices((images[:384], labels[:384])).batch(64)
val = tf.data.Dataset.from_tensor_slices((images[384:], labels[384:])).batch(64)
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = tiny_mobilenet((28, 28, 1), 4, width=0.25, dropout=0.0, head=16)
out = {"replicas": dist.replicas(strategy), "strategy": dist.describe(strategy)}
if "train" in parts:
    result = fine_tune(
        model,
        train,
        val,
        stages=[  # two stages: a compile (under the strategy's scope) each
            {"trainable": "head", "epochs": 1, "learning_rate": 0.004},
            {"trainable": "all", "epochs": 1, "learning_rate": 0.004},
        ],
        strategy=strategy,
    )
    out["loss"] = [r["loss"] for r in result["history"]]
    out["val_loss"] = [r["val_loss"] for r in result["history"]]
    out["weights"] = [np.asarray(w).ravel().tolist() for w in model.get_weights()]
_trained = []


def float_model():
    """The float model FAT and adjustable start from, the same whatever the strategy:
    fine-tuned once, on one device (no strategy scope)."""
    if not _trained:
        keras.utils.set_random_seed(2)
        model = tiny_mobilenet((28, 28, 1), 4, width=0.25, dropout=0.0, head=16)
        stages = [{"trainable": "all", "epochs": 2, "learning_rate": 0.004}]
        fine_tune(model, train, val, stages=stages)
        _trained.append(model)
    return _trained[0]


if "fat" in parts:  # from the same float model whatever the strategy: trained on one device
    trained = float_model()
    with strategy.scope():
        model = keras.models.clone_model(trained)
        model.set_weights(trained.get_weights())
        qmodel = fake_quant_model(model)
    calibrate(qmodel, images[:128], 2)
    epochs = []

    def record(row, improved):  # the alphas as trained, epoch by epoch (not the kept ones)
        epochs.append([np.asarray(v).ravel().tolist() for v, _, _ in alpha_bounds(qmodel)])

    fat = train_thresholds(
        model,
        qmodel,
        images[:256],
        epochs=2,
        batch_size=64,
        seed=3,
        val_ds=images[384:],
        learning_rate=1e-2,
        reset_every=4,
        strategy=strategy,
        on_epoch=record,
    )
    out["alpha_epochs"] = epochs
    out["fat"] = [fat["initial_val_rmse"]] + [r["val_rmse"] for r in fat["history"]]
    out["alphas"] = {v.path: np.asarray(v).ravel().tolist() for v, _, _ in alpha_bounds(qmodel)}
if "adjustable" in parts:  # one mini-epoch of ranges, one of bit widths, SWA
    from quantflow.quant.adjustable.score import ScoreGraph
    from quantflow.quant.adjustable.settings import Settings, build_model
    from quantflow.quant.adjustable.settings import calibrate as calibrate_adjustable
    from quantflow.quant.adjustable.train import _variables as _adjustable_variables
    from quantflow.quant.adjustable.train import train as search
    from quantflow.quant.micronet.count import count_model

    trained = float_model()
    settings = Settings(
        images=256, batch_size=64, calibration_batches=2, mini_epochs=2, swa_epochs=1
    )
    with strategy.scope():
        model = keras.models.clone_model(trained)
        model.set_weights(trained.get_weights())
        qmodel = build_model(model, settings)
    calibrate_adjustable(qmodel, images[:256], settings)
    graph = ScoreGraph(qmodel, count_model(model), reference=settings.reference)
    split = {
        "images": images[:256],
        "labels": labels[:256].astype(np.int32),
        "val_images": images[384:],
        "val_labels": labels[384:].astype(np.int32),
    }
    states = []

    def record(row, best):  # the variables as trained, mini-epoch by mini-epoch
        weights, betas = _adjustable_variables(qmodel)
        states.append(
            {
                "betas": np.concatenate([np.asarray(v).ravel() for v in betas]).tolist(),
                "weights": np.concatenate([np.asarray(v).ravel() for v in weights]).tolist(),
            }
        )

    result = search(
        model,
        qmodel,
        graph,
        split,
        settings,
        seed=0,
        log=lambda *_: None,
        strategy=strategy,
        on_checkpoint=record,
    )
    out["adjustable"] = {
        "history": [
            {k: r[k] for k in ("loss", "val_accuracy", "score", "mean_weight_bits")}
            for r in result["history"]
        ],
        "swa_after": result["swa"].get("after"),
        "states": states,
        "final_score": result["final_score"],
    }
if "gradient" in parts:  # one global batch: the replicas' summed gradient against one device's
    from quantflow.quant.fat.train import _LOSS_FUNCTIONS, replica_loss

    keras.utils.set_random_seed(4)
    with strategy.scope():
        model = tiny_mobilenet((28, 28, 1), 4, width=0.25, dropout=0.0, head=16)
        qmodel = fake_quant_model(model)
    calibrate(qmodel, images[:64], 1)
    alphas = [v for v, _, _ in alpha_bounds(qmodel)]
    x = images[:64]
    out["gradient"] = {}
    for loss in ("rmse", "smooth_l1"):
        with tf.GradientTape() as tape:
            value = _LOSS_FUNCTIONS[loss](qmodel(x), model(x))
        single = [np.asarray(g) for g in tape.gradient(value, alphas)]
        halves = np.array_split(x, dist.replicas(strategy))

        def replica(part, loss=loss):
            with tf.GradientTape() as tape:
                surrogate, _ = replica_loss(model, qmodel, part, loss)
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tape.gradient(surrogate, alphas))

        shards = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(halves[context.replica_id_in_sync_group])
        )
        summed = strategy.run(tf.function(replica), args=(shards,))
        summed = [np.asarray(strategy.experimental_local_results(g)[0]) for g in summed]
        out["gradient"][loss] = max(
            float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(single, summed)
        )
print(json.dumps(out))
