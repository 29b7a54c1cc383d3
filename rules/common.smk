# Config validation, wildcard constraints and the input functions every stage shares.

import os
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from quantflow.workflow.codedeps import code_digest as _code_digest
from quantflow.deploy.formats import parse_format
from quantflow import variants
from quantflow.quant.adjustable.targets import target_settings
from quantflow.models.custom import custom_code as _custom_code

# mappings a --configfile replaces instead of merging into (Snakemake merges key by key)
REPLACED_SECTIONS = (("models",), ("adjustable", "targets"))


def replace_sections_from_configfiles():
    """`models:` (and `adjustable: targets:`) in a --configfile replace config.yaml's
    instead of being merged into them: your file names the models (targets) that run.
    The last file that has the section wins."""
    for path in workflow.overwrite_configfiles or []:
        with open(path) as f:
            user = yaml.safe_load(f) or {}
        for keys in REPLACED_SECTIONS:
            given, target = user, config
            for key in keys[:-1]:
                given = given.get(key) if isinstance(given, dict) else None
                target = target.setdefault(key, {}) if isinstance(target, dict) else None
            if isinstance(given, dict) and keys[-1] in given and isinstance(target, dict):
                target[keys[-1]] = given[keys[-1]]


def config_error(error):
    """One line for a config that fails the schema: where, what, and what is allowed."""
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    allowed = ""
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = ".".join([*map(str, error.absolute_path), *extra]) if extra else where
        allowed = f"; allowed keys here: {', '.join(sorted(error.schema.get('properties', {})))}"
        what = "unknown key"
    else:
        what = error.message
    return f"quantflow: config: {where}: {what}{allowed} (see rules/config.schema.yaml)"


def validate_config():
    from quantflow.quant.adjustable.targets import adjustable_problems
    from quantflow.quant.schemes import scheme_problems

    # scheme names first: the schema would only print their pattern
    for problem in scheme_problems(config):
        print(f"quantflow: config: {problem} (see rules/config.schema.yaml)", file=sys.stderr)
        sys.exit(1)
    try:
        validate(config, "config.schema.yaml")
    except WorkflowError as e:
        cause = e.__context__  # the jsonschema ValidationError validate() caught
        if not hasattr(cause, "absolute_path"):
            raise
        print(config_error(cause), file=sys.stderr)
        sys.exit(1)  # the one line above, not the whole schema
    # what the schema cannot say: keys that depend on each other
    for problem in adjustable_problems(config):
        print(f"quantflow: config: {problem} (see rules/config.schema.yaml)", file=sys.stderr)
        sys.exit(1)


replace_sections_from_configfiles()
validate_config()

DATASET = config["dataset"]["name"]
MODELS = list(config["models"])
WEIGHTQUANT = config["weightquant"]
FAT = config["fat"]
FAT_SCHEMES = FAT["schemes"]
ADJUSTABLE = config["adjustable"]
ADJUSTABLE_TARGETS = list(ADJUSTABLE.get("targets") or {})


def adjustable_settings(target):
    """A target's settings: the section's, overridden by the target's own (the rest take
    quantflow.quant.adjustable.settings.Settings' defaults)."""
    return target_settings(ADJUSTABLE, target)


TFLITE = config["tflite"]
# int8 with the k layers tflite-int8's diagnosis finds worst left in float
if TFLITE["float_fallback"] and not config["diagnosis"]["images"]:
    print(
        "quantflow: config: tflite.float_fallback needs the per-layer diagnosis "
        "(diagnosis.images > 0) to choose its layers",
        file=sys.stderr,
    )
    sys.exit(1)
DIAGNOSIS = config["diagnosis"]
# every evaluated variant, in order (quantflow.variants: the one table of families)
VARIANTS = variants.enumerate(config)
REPO = workflow.basedir
ENV = "../envs/quantflow.yaml"

# Every file one job writes and others read, written once (the .smk files name them
# PATHS[...]); a variant's model file is quantflow.variants' (relative to MODEL_DIR).
MODEL_DIR = "results/{dataset}/{model}"
PATHS = {
    "raw_manifest": "data/{dataset}/raw/manifest.json",
    "info": "data/{dataset}/splits/info.json",
    "float_model": f"{MODEL_DIR}/float/model.keras",
    "float_weights": f"{MODEL_DIR}/float/weights.pickle",
    "training": f"{MODEL_DIR}/float/train.json",
    "fp32_tflite": f"{MODEL_DIR}/tflite/fp32.tflite",
    "counts": f"{MODEL_DIR}/micronet.json",
    "metrics": f"{MODEL_DIR}/eval/{{variant}}/metrics.json",
    "predictions": f"{MODEL_DIR}/eval/{{variant}}/predictions.npz",
    "latency": f"{MODEL_DIR}/eval/{{variant}}/latency.json",
    "diagnosis": f"{MODEL_DIR}/eval/{{variant}}/diagnosis.json",
    "weightquant_errors": f"{MODEL_DIR}/weightquant/{{algorithm}}_{{bits}}bits/errors.json",
    "fat_model": f"{MODEL_DIR}/fat/{{scheme}}/model.keras",
    "fat_thresholds": f"{MODEL_DIR}/fat/{{scheme}}/thresholds.pickle",
    "adjustable_model": f"{MODEL_DIR}/adjustable/{{target}}/model.keras",
    "adjustable_quant_info": f"{MODEL_DIR}/adjustable/{{target}}/quant_info.json",
    "adjustable_model_info": f"{MODEL_DIR}/adjustable/{{target}}/model_info.json",
}


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    model=r"[A-Za-z0-9_.-]+",
    variant=r"[a-z0-9.-]+",
    fmt=r"(fp32|fp16|dynamic|int16x8|int8)(-cal[0-9]+(pct)?|-class[0-9]+)?",
    aeq=r"int4-weights|dynamic-int4",
    aeq_static=r"static-int4",
    k=r"[0-9]+",
    algorithm=r"bin|fixed",
    bits=r"[0-9]+",
    scheme=r"w[0-9]+a[0-9]+-(sym|asym)-(pc|pt)",
    target=r"[a-z0-9]+",


def image_lists(wildcards):
    """An image_list dataset's list files: editing one reruns prepare."""
    cfg = config["dataset"]
    keys = ("train_list", "test_list", "val_list")
    return [cfg[k] for k in keys if cfg.get(k)] if cfg["name"] == "image_list" else []


def split_file(split):
    return f"data/{{dataset}}/splits/{split}.npz"


def result_dir(wildcards):
    return MODEL_DIR.format(dataset=wildcards.dataset, model=wildcards.model)


def parsed_variant(wildcards):
    variant = variants.parse(wildcards.variant)
    if variant is None:
        raise WorkflowError(
            f"quantflow: unknown variant {wildcards.variant!r} (quantflow/variants.py lists the families)"
        )
    return variant


def variant_model(wildcards):
    """The model file a variant is evaluated from (quantflow.variants)."""
    return f"{result_dir(wildcards)}/{parsed_variant(wildcards).model_file}"


def tflite_params(wildcards):
    """What a conversion depends on besides the model: the calibration sample (size and
    seed) for full-integer formats, the I/O type for int8 ones; nothing for the others,
    so changing tflite.io reruns only the int8 models."""
    base = parse_format(wildcards.fmt)["base"]
    if base not in ("int8", "int16x8"):
        return {}
    out = {"calibration_images": TFLITE["calibration_images"], "seed": config["seed"]}
    if base == "int8":
        out["io"] = TFLITE["io"]
    return out


def variant_extras(wildcards):
    """Files an evaluation merges besides the model: the MicroNet score of an adjustable
    variant (its bits are its own; the summary scores the uniform variants itself)."""
    extras = parsed_variant(wildcards).extras
    return {k: f"{result_dir(wildcards)}/{path}" for k, path in extras.items()}


def model_spec(wildcards):
    return config["models"][wildcards.model]


def custom_code(wildcards):
    """The model entry's custom code (quantflow.models.custom), for every job that loads
    one of its Keras models: the files to import and the Lambda opt-in."""
    return {"model": wildcards.model, **_custom_code(config["models"][wildcards.model])}


def model_files(wildcards):
    """Files the train job reads because config names them: a keras_file model, its custom
    modules, a local weights file, the checkpoint to restore. Replacing one reruns
    training (and so every job after it)."""
    spec = config["models"][wildcards.model]
    files = [spec["path"]] if spec.get("path") else []
    files += spec.get("custom_modules") or []
    if spec.get("arch") == "saved_model" and files:  # a directory: its graph file
        files = [os.path.join(spec["path"], "saved_model.pb")]
    if spec.get("weights") not in (None, "none", "imagenet"):
        files.append(spec["weights"])
    if config["train"].get("checkpoint"):
        files.append(config["train"]["checkpoint"])
    return files


def without(mapping, *keys):
    """A config section minus the keys that do not change a job's results (how many
    threads, which variants are evaluated): params hold only what the job's output
    depends on, so changing the rest reruns nothing."""
    return {k: v for k, v in mapping.items() if k not in keys}


def code_digest(script, *modules):
    """Digest of scripts/<script>.py and every quantflow module it can import (and of
    `modules`, dotted names a script loads by name, with theirs): a rule's `code` param,
    so editing library code reruns exactly the jobs that run it."""
    return _code_digest(os.path.join(REPO, "scripts", f"{script}.py"), REPO, modules)


def latency_cores():
    """The timing job holds every core of a local run, so nothing runs beside it; on a
    cluster it asks for evaluate.latency_threads and a node of its own (profiles/slurm)."""
    cores = workflow._cores  # --cores (None when not given)
    if workflow.local_exec and isinstance(cores, int):
        return max(cores, config["evaluate"]["latency_threads"])
    return config["evaluate"]["latency_threads"]


def all_metrics(name="metrics"):
    """metrics.json (or predictions.npz: name "predictions") of every variant."""
    return expand(
        PATHS[name],
        dataset=DATASET,
        model=MODELS,
        variant=VARIANTS,
    )


def all_latencies():
    """The timing files of the evaluated variants (shared by the weight-only ones; none
    for the simulations: quantflow.variants.timed_variant)."""
    return sorted(
        {
            PATHS["latency"].format(
                dataset=DATASET, model=model, variant=variants.timed_variant(variant)
            )
            for model in MODELS
            for variant in VARIANTS
            if variants.timed_variant(variant)
        }
    )


def all_weightquant_errors():
    return expand(
        PATHS["weightquant_errors"],
        dataset=DATASET,
        model=MODELS,
        algorithm=WEIGHTQUANT["algorithms"],
        bits=WEIGHTQUANT["bits"],
    )


def weightquant_checkpoint(path):
    """Weight-quantized checkpoints are only read by evaluate: temporary unless
    weightquant: keep_checkpoints (a big sweep would otherwise keep one copy per bit width)."""
    return path if WEIGHTQUANT["keep_checkpoints"] else temp(path)


def all_fat(name):
    """A per-scheme FAT file (fat.json, history.csv, tflite.json) of every model."""
    schemes = FAT_SCHEMES
    if name == "tflite.json":
        schemes = [s for s in FAT_SCHEMES if variants.fat_exportable(s)]
    return expand(
        f"{MODEL_DIR}/fat/{{scheme}}/{{name}}",
        dataset=DATASET,
        model=MODELS,
        scheme=schemes,
        name=name,
    )


LATENCY_CORES = latency_cores()


def all_adjustable(name):
    """A per-target adjustable file of every model (tflite.json only for exportable ones)."""
    targets = ADJUSTABLE_TARGETS
    if name == "tflite.json":
        targets = [t for t in targets if variants.adjustable_target_exportable(config, t)]
    return expand(
        f"{MODEL_DIR}/adjustable/{{target}}/{{name}}",
        dataset=DATASET,
        model=MODELS,
        target=targets,
        name=name,
    )


def adjustable_fat_init(wildcards):
    """The FAT thresholds the ranges start from (config adjustable.init_from_fat)."""
    scheme = ADJUSTABLE.get("init_from_fat")
    if not scheme:
        return {}
    where = dict(dataset=wildcards.dataset, model=wildcards.model, scheme=scheme)
    return {"fat_thresholds": PATHS["fat_thresholds"].format(**where)}


def all_diagnoses():
    """diagnosis.json of every int8 variant of every model (none when switched off)."""
    if not DIAGNOSIS["images"]:
        return []
    return expand(
        PATHS["diagnosis"],
        dataset=DATASET,
        model=MODELS,
        variant=[v for v in VARIANTS if variants.parse(v).family.int8],
    )
