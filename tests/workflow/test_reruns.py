"""A rerun follows every change that matters to a job, and nothing else.

A micro pipeline runs once from a copy of the workflow (so its library code can be
edited); then each kind of change is made and `snakemake -n` must plan exactly the jobs
it affects: a new FAT scheme, a new adjustable target, a thread count, a library module, a module touched but not
changed, a file named in config, a user config that replaces the models.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_workflow

from quantflow.variants import timed_variant

pytestmark = pytest.mark.workflow
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

MICRO = yaml.safe_load((REPO / "tests/configs/micro.yaml").read_text())


def snakemake(repo, work, config, *args):
    cmd = [
        SNAKEMAKE,
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        *map(str, config if isinstance(config, list) else [config]),
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in work.glob("logs/**/*.log"))
        pytest.fail(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}\n{logs}"
        )
    return proc.stdout + proc.stderr


def planned(repo, work, config, *args):
    """{(rule, wildcards)} of the jobs `snakemake -n` plans ('all' left out)."""
    out = snakemake(repo, work, config, "-n", *args)
    jobs, rule = set(), None
    for line in out.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line)
        if head:
            rule = head.group(1)
            if rule != "all":
                jobs.add((rule, ""))
            continue
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and rule and rule != "all":
            jobs.discard((rule, ""))
            jobs.add((rule, wildcards.group(1)))
    return jobs


def job(rule, **wildcards):
    return (rule, ", ".join(f"{k}={v}" for k, v in wildcards.items()))


def variant_jobs(*variants):
    """Evaluation and timing jobs (the simulations are not timed)."""
    return {
        job(rule, dataset="fashion_mnist", model="micro", variant=v)
        for v in variants
        for rule in ("latency", "evaluate")
        if rule == "evaluate" or timed_variant(v) == v
    }


SUMMARY = {("summary", "")}


@pytest.fixture(scope="module")
def micro(tmp_path_factory, fashion_mnist_dir):
    base = tmp_path_factory.mktemp("reruns")
    repo = base / "repo"
    copy_workflow(repo)
    work = base / "work"
    work.mkdir()
    config = json.loads(json.dumps(MICRO))
    config["dataset"]["mirrors"] = [f"file://{fashion_mnist_dir}"]
    cfg = base / "micro.yaml"
    cfg.write_text(yaml.safe_dump(config))
    snakemake(repo, work, cfg)
    assert planned(repo, work, cfg) == set()
    return repo, work, cfg, config


def with_config(base, name, config, **changes):
    changed = json.loads(json.dumps(config))
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = changed
        for p in path:
            node = node[p]
        node[key] = value
    path = base / name
    path.write_text(yaml.safe_dump(changed))
    return path


def test_a_new_fat_scheme_plans_only_its_own_jobs(micro):
    repo, work, cfg, config = micro
    more = with_config(
        cfg.parent, "more.yaml", config, **{"fat.schemes": ["w8a8-sym-pc", "w4a8-sym-pc"]}
    )
    scheme = dict(dataset="fashion_mnist", model="micro", scheme="w4a8-sym-pc")
    assert planned(repo, work, more) == {
        job("fat", **scheme),
        job("fat_tflite", **scheme),
        *variant_jobs("fat-w4a8-sym-pc", "fat-w4a8-sym-pc-sim"),
        *SUMMARY,
    }


def test_a_new_adjustable_target_plans_only_its_own_jobs(micro):
    repo, work, cfg, config = micro
    more = with_config(
        cfg.parent, "target.yaml", config, **{"adjustable.targets": {"m1": {"target_score": 0.3}}}
    )
    target = dict(dataset="fashion_mnist", model="micro", target="m1")
    # its ranges start from the FAT w8a8 thresholds the run already has
    assert planned(repo, work, more) == {
        job("adjustable", **target),
        job("adjustable_tflite", **target),
        *variant_jobs("adjq-m1", "adjq-m1-int8"),
        *SUMMARY,
    }
    # a target that may use more than 8 bits has no int8 TFLite model
    wide = with_config(
        cfg.parent, "wide.yaml", config, **{"adjustable.targets": {"m2": {"max_bits": 10}}}
    )
    assert planned(repo, work, wide) == {
        job("adjustable", dataset="fashion_mnist", model="micro", target="m2"),
        *variant_jobs("adjq-m2"),
        *SUMMARY,
    }


def test_thread_counts_and_mirrors_rerun_nothing_but_the_summary(micro):
    repo, work, cfg, config = micro
    other = with_config(
        cfg.parent,
        "threads.yaml",
        config,
        **{
            "train.threads": 1,
            "fat.threads": 1,
            "dataset.retries": 1,
            "dataset.mirrors": config["dataset"]["mirrors"] * 2,
        },
    )
    # the summary prints the config it ran with, so it (alone) is rendered again
    assert planned(repo, work, other) == SUMMARY


def test_a_training_parameter_reruns_everything_downstream_of_training(micro):
    repo, work, cfg, config = micro
    other = with_config(
        cfg.parent,
        "lr.yaml",
        config,
        **{"train.stages": [{"epochs": 1, "learning_rate": 0.002, "warmup_steps": 2}]},
    )
    jobs = planned(repo, work, other)
    assert job("train", dataset="fashion_mnist", model="micro") in jobs
    assert not {r for r, _ in jobs} & {"download", "prepare"}


def test_editing_a_library_module_reruns_exactly_the_jobs_that_run_it(micro):
    repo, work, cfg, _ = micro
    module = repo / "quantflow/deploy/convert.py"
    original = module.read_text()
    try:
        # touched, not changed: nothing to do
        module.write_text(original)
        assert planned(repo, work, cfg) == set()
        # changed: the conversions that import it, and what reads their models
        module.write_text(original + "\n# an edit\n")
        assert planned(repo, work, cfg) == {
            job("tflite", dataset="fashion_mnist", model="micro", fmt="fp32"),
            job("fat_tflite", dataset="fashion_mnist", model="micro", scheme="w8a8-sym-pc"),
            job("adjustable_tflite", dataset="fashion_mnist", model="micro", target="m0"),
            job("weightonly_tflite", dataset="fashion_mnist", model="micro", bits="8"),
            *variant_jobs("tflite-fp32", "fat-w8a8-sym-pc", "adjq-m0-int8", "fixed-8-tflite"),
            *SUMMARY,
        }
    finally:
        module.write_text(original)
    assert planned(repo, work, cfg) == set()


def test_editing_the_fake_quant_module_reruns_fat_but_not_training(micro):
    repo, work, cfg, _ = micro
    module = repo / "quantflow/quant/transform.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        rules = {rule for rule, _ in planned(repo, work, cfg)}
        assert {"fat", "fat_tflite", "evaluate", "latency", "summary"} <= rules
        assert not rules & {"download", "prepare", "train", "extract_weights", "weightquant"}
    finally:
        module.write_text(original)


def edited(repo, work, cfg, relative):
    """The jobs `snakemake -n` plans after an edit of one file of the workflow copy (the
    file is restored afterwards, and then nothing is planned)."""
    path = repo / relative
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        return planned(repo, work, cfg)
    finally:
        path.write_text(original)
        assert planned(repo, work, cfg) == set()


def test_an_edit_to_fat_training_plans_fat_and_what_reads_its_outputs(micro):
    repo, work, cfg, _ = micro
    scheme = dict(dataset="fashion_mnist", model="micro", scheme="w8a8-sym-pc")
    target = dict(dataset="fashion_mnist", model="micro", target="m0")
    assert edited(repo, work, cfg, "quantflow/quant/fat/train.py") == {
        job("fat", **scheme),
        job("fat_tflite", **scheme),
        # the adjustable target starts from FAT's thresholds (adjustable.init_from_fat)
        job("adjustable", **target),
        job("adjustable_tflite", **target),
        *variant_jobs("fat-w8a8-sym-pc", "fat-w8a8-sym-pc-sim", "adjq-m0", "adjq-m0-int8"),
        *SUMMARY,
    }


def test_an_edit_to_the_fixed_point_code_plans_only_the_fixed_jobs(micro):
    repo, work, cfg, _ = micro
    assert edited(repo, work, cfg, "quantflow/quant/weightonly/fixed.py") == {
        job("weightquant", dataset="fashion_mnist", model="micro", algorithm="fixed", bits="8"),
        # and the LiteRT file made from that checkpoint
        job("weightonly_tflite", dataset="fashion_mnist", model="micro", bits="8"),
        *variant_jobs("fixed-8", "fixed-8-tflite"),
        *SUMMARY,
    }


@pytest.mark.parametrize(
    "relative",
    [
        "reports/summary.md.j2",
        "reports/comparison.md.j2",
        "quantflow/report/verdict.py",
        "quantflow/report/methods.py",
    ],
)
def test_an_edit_to_the_report_plans_only_the_summary(micro, relative):
    repo, work, cfg, _ = micro
    assert edited(repo, work, cfg, relative) == SUMMARY


def test_files_named_in_config_are_inputs_of_training(micro, tmp_path):
    repo, work, cfg, config = micro
    model, checkpoint = tmp_path / "mine.keras", tmp_path / "start.weights.h5"
    user = with_config(
        tmp_path,
        "user.yaml",
        config,
        **{
            "models": {"mine": {"arch": "keras_file", "path": str(model)}},
            "train.checkpoint": str(checkpoint),
        },
    )
    out = subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(repo / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(user),
            "-n",
            "--cores",
            "1",
            "--",
            "results/fashion_mnist/mine/float/model.keras",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # missing files named in config are missing inputs: Snakemake names them
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "MissingInputException" in text and str(model) in text and str(checkpoint) in text


def test_a_user_config_replaces_the_default_models(micro, tmp_path):
    repo, work, cfg, config = micro
    shutil.copy(repo / "config.yaml", tmp_path / "config.yaml")  # the default underneath
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"models": {"small": {"arch": "tiny_mobilenet", "width": 0.5}}}))
    out = subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(repo / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(user),
            "-n",
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "model=small" in out.stdout and "tiny_mobilenet" not in out.stdout


def test_make_report_passes_the_config_file():
    out = subprocess.run(
        ["make", "-n", "report", "CONFIG=my.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(line for line in out.stdout.splitlines() if "--forcerun summary" in line)
    assert "--configfile my.yaml" in line and line.rstrip().endswith("-- results/summary.md")


TOY_FAMILY = """
# a toy method, one entry: the weight-only checkpoints evaluated under another name
FAMILIES.append(Family("toy", "toy method", "toy-{algorithm}-{bits}",
                       "weightquant/{algorithm}_{bits}bits/weights.pickle", "simulation",
                       "TensorFlow", "keras-float", _weight_only_bits, "weightquant"))
"""


def test_a_new_variant_family_is_one_entry_planned_evaluated_and_reported(micro):
    repo, work, cfg, _ = micro
    registry = repo / "quantflow/variants.py"
    original = registry.read_text()
    try:
        registry.write_text(original + TOY_FAMILY)
        # planned: its evaluations (its timing is keras-float's, already there) and the
        # summary, whose report reads the registry
        assert planned(repo, work, cfg) == {
            *(
                job("evaluate", dataset="fashion_mnist", model="micro", variant=v)
                for v in ("toy-bin-8", "toy-fixed-8")
            ),
            *SUMMARY,
        }
        snakemake(repo, work, cfg)
        records = json.loads((work / "results/summary.json").read_text())
        by = {r["variant"]: r for r in records}
        for algorithm in ("bin", "fixed"):
            toy, same = by[f"toy-{algorithm}-8"], by[f"{algorithm}-8"]
            # evaluated from the file its entry names: the weight-only checkpoint's numbers
            assert toy["accuracy"] == same["accuracy"] and toy["size_bytes"] == same["size_bytes"]
            assert toy["latency_variant"] == "keras-float"
            assert toy["ms_per_image_b1"] == same["ms_per_image_b1"]  # keras-float's
            assert toy["score"] == same["score"]  # scored with the bits its entry gives
        md = (work / "results/summary.md").read_text()
        assert "toy method" in md and "toy-bin-8" in md
    finally:
        registry.write_text(original)
        snakemake(repo, work, cfg)  # the summary again without it
    assert planned(repo, work, cfg) == set()


def test_the_advice_for_a_corrupt_pickle_recovers_it(micro):
    """A corrupt float/weights.pickle: the job that reads it stops with one line giving
    the command that recovers (deleting the file would not: snakemake sees its consumers'
    outputs and has nothing to do); following that command recovers the run."""
    repo, work, cfg, _ = micro
    pickle_path = work / "results/fashion_mnist/micro/float/weights.pickle"
    good = pickle_path.read_bytes()
    pickle_path.write_bytes(good[: len(good) // 2])  # truncated
    base = [SNAKEMAKE, "--snakefile", str(repo / "Snakefile"), "--directory", str(work)]
    base += ["--configfile", str(cfg)]
    proc = subprocess.run(
        [*base, "--cores", "2", "--forcerun", "weightquant"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in work.glob("logs/weightquant/**/*.log"))
    advice = re.search(r"recreate it with: (snakemake --cores all --forcerun (\w+))", logs)
    assert advice and advice.group(2) == "extract_weights", logs[-2000:]
    # deleting it is not enough: snakemake has nothing to do
    pickle_path.unlink()
    assert "extract_weights" not in {rule for rule, _ in planned(repo, work, cfg)}
    # the advice, with this run's configfile as it says
    args = advice.group(1).split()[1:]  # after "snakemake"
    args[args.index("all")] = "2"
    proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from quantflow.formats.weights import load_weights

    assert load_weights(pickle_path)["layers"]
    assert planned(repo, work, cfg) == set()
