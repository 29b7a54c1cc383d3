rule summary:
    """Aggregate every variant's metrics into summary.json and render summary.md.
    Editing the template reruns only this rule: `make report`."""
    input:
        metrics=all_metrics(),
        predictions=all_metrics("predictions"),
        latencies=all_latencies(),
        training=expand(PATHS["training"], dataset=DATASET, model=MODELS),
        errors=all_weightquant_errors(),
        fat=all_fat("fat.json"),
        fat_history=all_fat("history.csv"),
        fat_thresholds=all_fat("thresholds.pickle"),
        fat_checks=all_fat("tflite.json"),
        diagnoses=all_diagnoses(),
        counts=expand(PATHS["counts"], dataset=DATASET, model=MODELS),
        adjustable=all_adjustable("adjustable.json"),
        adjustable_bits=all_adjustable("quant_info.json"),
        adjustable_checks=all_adjustable("tflite.json"),
        info=expand(PATHS["info"], dataset=DATASET),
        template=os.path.join(REPO, "reports/summary.md.j2"),
        comparison_template=os.path.join(REPO, "reports/comparison.md.j2"),
    output:
        json="results/summary.json",
        md="results/summary.md",
        run_config="results/run_config.yaml",
        html=report(
            "results/summary.html",
            caption="../reports/summary.rst",
            category="Summary",
        ),
        front="results/report_front.html",
        size_plot=report(
            "results/accuracy_vs_size.png",
            caption="../reports/accuracy_vs_size.rst",
            category="Summary",
        ),
        weightquant_plot=report(
            "results/weightquant_accuracy.png",
            caption="../reports/weightquant.rst",
            category="Weight-only quantization",
        ),
        fat_rmse_plot=report(
            "results/fat_rmse.png",
            caption="../reports/fat_rmse.rst",
            category="FAT",
        ),
        fat_alphas_plot=report(
            "results/fat_alphas.png",
            caption="../reports/fat_alphas.rst",
            category="FAT",
        ),
        diagnosis_plot=report(
            "results/int8_diagnosis.png",
            caption="../reports/diagnosis.rst",
            category="Post-training quantization",
        ),
        calibration_plot=report(
            "results/int8_calibration.png",
            caption="../reports/calibration.rst",
            category="Post-training quantization",
        ),
        pareto_plot=report(
            "results/accuracy_vs_score.png",
            caption="../reports/pareto.rst",
            category="Summary",
        ),
        adjustable_weight_bits_plot=report(
            "results/adjustable_weight_bits.png",
            caption="../reports/adjustable_bits.rst",
            category="Adjustable mixed precision",
        ),
        adjustable_activation_bits_plot=report(
            "results/adjustable_activation_bits.png",
            caption="../reports/adjustable_bits.rst",
            category="Adjustable mixed precision",
        ),
        recall_plot=report(
            "results/per_class_recall.png",
            caption="../reports/per_class_recall.rst",
            category="Summary",
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
        code=code_digest("summary"),
    script:
        "../scripts/summary.py"
