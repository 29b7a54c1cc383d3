rule train:
    """Train the float model; keep the best epoch on validation accuracy."""
    input:
        train=split_file("train"),
        val=split_file("val"),
        info=PATHS["info"],
        files=model_files,
    output:
        model=PATHS["float_model"],
        history="results/{dataset}/{model}/float/history.csv",
        summary=PATHS["training"],
    log:
        "logs/train/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{model}.tsv"
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        mem_mb=6000,
        runtime=120,
    params:
        custom=custom_code,
        spec=model_spec,
        train=without(config["train"], "threads"),
        seed=config["seed"],
        augment=config["dataset"]["augment"],
        code=code_digest("train"),
    script:
        "../scripts/train.py"
