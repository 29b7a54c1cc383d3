rule latency:
    """Milliseconds per image of one variant, at batch 1 and batched. Run locally, the job
    holds every core (threads: all of --cores), so nothing else runs while it times; on
    SLURM it asks for a node of its own (--exclusive, profiles/slurm)."""
    input:
        model=variant_model,
        test=split_file("test"),
        info=PATHS["info"],
    output:
        latency=PATHS["latency"],
    log:
        "logs/latency/{dataset}/{model}/{variant}.log",
    conda:
        ENV
    threads: LATENCY_CORES
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        custom=custom_code,
        batch_size=config["evaluate"]["batch_size"],
        latency_images=config["evaluate"]["latency_images"],
        latency_batches=config["evaluate"]["latency_batches"],
        threads=config["evaluate"]["latency_threads"],
        code=code_digest("latency"),
    script:
        "../scripts/latency.py"


rule evaluate:
    """Accuracy metrics and size of one variant on the test split (may run beside other
    jobs; the summary adds the exclusive latency job's timing), and an adjustable
    variant's MicroNet score."""
    input:
        unpack(variant_extras),
        model=variant_model,
        test=split_file("test"),
        info=PATHS["info"],
    output:
        metrics=PATHS["metrics"],
        predictions=PATHS["predictions"],
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
        custom=custom_code,
        batch_size=config["evaluate"]["batch_size"],
        code=code_digest("evaluate"),
    script:
        "../scripts/evaluate.py"


rule micronet_counts:
    """Parameters and operations of the float model per layer (quantflow.quant.micronet's
    counting convention): every variant's MicroNet score is weighed from these."""
    input:
        model=PATHS["float_model"],
    output:
        counts=PATHS["counts"],
    log:
        "logs/micronet_counts/{dataset}/{model}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        custom=custom_code,
        code=code_digest("micronet_counts"),
    script:
        "../scripts/micronet_counts.py"


rule diagnose:
    """Per-layer diagnosis of an int8 variant: every op's output against the fp32 TFLite
    model's on held-out images (SNR, error in quantization steps, cosine, the error each
    op adds), in network order."""
    input:
        reference=PATHS["fp32_tflite"],
        model=variant_model,
        val=split_file("val"),
        info=PATHS["info"],
    output:
        diagnosis=PATHS["diagnosis"],
    log:
        "logs/diagnose/{dataset}/{model}/{variant}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        images=DIAGNOSIS["images"],
        seed=config["seed"],
        code=code_digest("diagnose"),
    script:
        "../scripts/diagnose.py"
