# Config validation, wildcard constraints and the input functions every stage shares.

import os

from snakemake.utils import validate

validate(config, "config.schema.yaml")

DATASET = config["dataset"]["name"]
MODELS = list(config["models"])
VARIANTS = config["variants"]
REPO = workflow.basedir
ENV = "../envs/quantflow.yaml"


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    model=r"[A-Za-z0-9_.-]+",
    variant=r"[a-z0-9.-]+",
    fmt=r"fp32|int8",


def split_file(split):
    return f"data/{{dataset}}/splits/{split}.npz"


# Every evaluated variant and the model file it is measured from.
VARIANT_FILES = {
    "keras-float": "results/{dataset}/{model}/float/model.keras",
    "tflite-fp32": "results/{dataset}/{model}/tflite/fp32.tflite",
    "tflite-int8": "results/{dataset}/{model}/tflite/int8.tflite",
}


def variant_model(wildcards):
    """The model file a variant is evaluated from."""
    return VARIANT_FILES[wildcards.variant].format(dataset=wildcards.dataset, model=wildcards.model)


def model_spec(wildcards):
    return config["models"][wildcards.model]


def all_metrics():
    return expand(
        "results/{dataset}/{model}/eval/{variant}/metrics.json",
        dataset=DATASET,
        model=MODELS,
        variant=VARIANTS,
    )
