"""Is the float model worth comparing? Checked after training, before anything is quantized:
a validation accuracy near chance, or far below the training accuracy, makes every later
comparison meaningless (a model that predicts one class agrees 100% with its int8 twin).

    check = float_model_check(best_row, num_classes, momenta, epochs)
    check["status"]     # "ok", "near_chance" or "overfit"
    check["warning"]    # what is wrong, the likely cause and the config key to change; or None

Also the BatchNorm momentum of a user's model: `batchnorm_momentum(model, value)` sets it
(config train.batchnorm_momentum), and without a value caps it at the zoo's BN_MOMENTUM,
saying so: Keras' MobileNetV2 keeps 0.999, whose moving statistics barely move in a short
fine-tune (validation at chance while training accuracy climbs)."""

from __future__ import annotations

CHANCE_FACTOR = 1.5  # validation top-1 below this many times chance: at chance
GAP_PP = 25.0  # training top-1 this many points above validation: not learning what it tests
HIGH_MOMENTUM = 0.99  # a BatchNorm momentum at least this high settles slowly


def float_model_check(best: dict, num_classes: int, momenta: list[float], epochs: int) -> dict:
    """The verdict on a trained float model from its kept epoch's row (`accuracy`,
    `val_accuracy`), the number of classes, its BatchNorm momenta and the epochs run."""
    chance = 1.0 / max(int(num_classes), 1)
    train, val = best.get("accuracy"), best.get("val_accuracy")
    out = {
        "train_accuracy": train,
        "val_accuracy": val,
        "chance": chance,
        "status": "ok",
        "warning": None,
    }
    if val is None:
        return out
    high = [m for m in momenta if m >= HIGH_MOMENTUM]
    cause = ""
    if high:
        cause = (
            f" Likely cause: {len(high)} BatchNormalization layer(s) with momentum up to "
            f"{max(high):g} in a {epochs}-epoch fine-tune: their moving statistics still hold "
            "their initial values, so the inference model is not the one trained; set "
            "train.batchnorm_momentum (e.g. 0.9) in config and rerun."
        )
    if val < CHANCE_FACTOR * chance:
        out["status"] = "near_chance"
        out["warning"] = (
            f"the float model is at chance: validation top-1 {100 * val:.1f}% with "
            f"{num_classes} classes (chance {100 * chance:.1f}%)"
            + (f", training top-1 {100 * train:.1f}%" if train is not None else "")
            + "; quantized variants compared against it mean nothing, so the verdict is "
            "withheld." + (cause or " Train longer or check the data and the model.")
        )
    elif train is not None and 100 * (train - val) > GAP_PP:
        out["status"] = "overfit"
        out["warning"] = (
            f"the float model's validation top-1 ({100 * val:.1f}%) is far below its "
            f"training top-1 ({100 * train:.1f}%)." + (cause or " It may be overfitting.")
        )
    return out


def batchnorm_momentum(model, value: float | None = None, cap: float | None = None) -> list[str]:
    """Set every BatchNormalization layer's momentum to `value`, or (without one) lower
    those above `cap` to it. Returns what it did, one line per change, for the log."""
    from keras import layers

    changed = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, layers.BatchNormalization):
            continue
        before = layer.momentum
        if value is not None:
            layer.momentum = float(value)
        elif cap is not None and before > cap:
            layer.momentum = float(cap)
        if layer.momentum != before:
            changed.append(f"{layer.name}: momentum {before:g} -> {layer.momentum:g}")
    return changed


def momenta(model) -> list[float]:
    """The momentum of every BatchNormalization layer (nested models included)."""
    from keras import layers

    return [
        float(layer.momentum)
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, layers.BatchNormalization)
    ]
