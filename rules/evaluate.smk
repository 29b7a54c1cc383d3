rule evaluate:
    """Accuracy metrics, size and latency of one variant on the test split."""
    input:
        model=variant_model,
        test=split_file("test"),
        info="data/{dataset}/splits/info.json",
    output:
        metrics="results/{dataset}/{model}/eval/{variant}/metrics.json",
        confusion=report(
            "results/{dataset}/{model}/eval/{variant}/confusion.png",
            caption="../reports/confusion.rst",
            category="Confusion matrices",
            subcategory="{model}",
            labels={"model": "{model}", "variant": "{variant}"},
        ),
    log:
        "logs/evaluate/{dataset}/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{model}/{variant}.tsv"
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        batch_size=config["evaluate"]["batch_size"],
        latency_images=config["evaluate"]["latency_images"],
    script:
        "../scripts/evaluate.py"
