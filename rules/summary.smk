rule summary:
    """Aggregate every variant's metrics into summary.json and render summary.md.
    Editing the template reruns only this rule: `make report`."""
    input:
        metrics=all_metrics(),
        training=expand("results/{dataset}/{model}/float/train.json", dataset=DATASET, model=MODELS),
        errors=all_weightquant_errors(),
        info=expand("data/{dataset}/splits/info.json", dataset=DATASET),
        template=os.path.join(REPO, "reports/summary.md.j2"),
    output:
        json="results/summary.json",
        md=report(
            "results/summary.md",
            caption="../reports/summary.rst",
            category="Summary",
        ),
        weightquant_plot=report(
            "results/weightquant_accuracy.png",
            caption="../reports/weightquant.rst",
            category="Weight-only quantization",
        ),
    log:
        "logs/summary.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        config=config,
    script:
        "../scripts/summary.py"
