# Config validation, wildcard constraints and the input functions every stage shares.

import os
import re

from snakemake.utils import validate

validate(config, "config.schema.yaml")

DATASET = config["dataset"]["name"]
MODELS = list(config["models"])
WEIGHTQUANT = config["weightquant"]
# Weight-only quantized checkpoints are variants too: bin-8, fixed-4, ...
WEIGHTQUANT_VARIANTS = [
    f"{algorithm}-{bits}" for algorithm in WEIGHTQUANT["algorithms"] for bits in WEIGHTQUANT["bits"]
]
VARIANTS = config["variants"] + WEIGHTQUANT_VARIANTS
REPO = workflow.basedir
ENV = "../envs/quantflow.yaml"


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    model=r"[A-Za-z0-9_.-]+",
    variant=r"[a-z0-9.-]+",
    fmt=r"fp32|int8",
    algorithm=r"bin|fixed",
    bits=r"[0-9]+",


def image_lists(wildcards):
    """An image_list dataset's list files: editing one reruns prepare."""
    cfg = config["dataset"]
    keys = ("train_list", "test_list", "val_list")
    return [cfg[k] for k in keys if cfg.get(k)] if cfg["name"] == "image_list" else []


def split_file(split):
    return f"data/{{dataset}}/splits/{split}.npz"


# Every evaluated variant and the model file it is measured from.
VARIANT_FILES = {
    "keras-float": "results/{dataset}/{model}/float/model.keras",
    "tflite-fp32": "results/{dataset}/{model}/tflite/fp32.tflite",
    "tflite-int8": "results/{dataset}/{model}/tflite/int8.tflite",
}


def variant_model(wildcards):
    """The model file a variant is evaluated from: a weight-quantized checkpoint for
    bin-<bits> and fixed-<bits>, else VARIANT_FILES."""
    weightquant = re.fullmatch(r"(bin|fixed)-([0-9]+)", wildcards.variant)
    if weightquant:
        algorithm, bits = weightquant.groups()
        path = f"results/{{dataset}}/{{model}}/weightquant/{algorithm}_{bits}bits/weights.pickle"
    else:
        path = VARIANT_FILES[wildcards.variant]
    return path.format(dataset=wildcards.dataset, model=wildcards.model)


def model_spec(wildcards):
    return config["models"][wildcards.model]


def all_metrics():
    return expand(
        "results/{dataset}/{model}/eval/{variant}/metrics.json",
        dataset=DATASET,
        model=MODELS,
        variant=VARIANTS,
    )


def all_weightquant_errors():
    return expand(
        "results/{dataset}/{model}/weightquant/{variant}/errors.json",
        dataset=DATASET,
        model=MODELS,
        variant=[v.replace("-", "_") + "bits" for v in WEIGHTQUANT_VARIANTS],
    )


def weightquant_checkpoint(path):
    """Weight-quantized checkpoints are only read by evaluate: temporary unless
    weightquant: keep_checkpoints (a big sweep would otherwise keep one copy per bit width)."""
    return path if WEIGHTQUANT["keep_checkpoints"] else temp(path)
