# quantflow: from a dataset to quantized, deployable models and a report.
# The rules live in rules/, one file per stage; scripts/ hold their thin entry points;
# the library quantflow/ does the work. Default target: results/summary.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/prepare.smk"
include: "rules/train.smk"
include: "rules/tflite.smk"
include: "rules/weightquant.smk"
include: "rules/fat.smk"
include: "rules/adjustable.smk"
include: "rules/evaluate.smk"
include: "rules/summary.smk"


rule all:
    default_target: True
    input:
        "results/summary.json",
        "results/summary.md",
        "results/summary.html",
