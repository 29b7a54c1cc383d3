rule adjustable:
    """Adjustable mixed-precision quantization of the float model for one target: per-channel
    trainable ranges and bit widths, the MicroNet score in the loss; the best checkpoint,
    the simulated model, its bits and score, and its weights packed at their own bits."""
    input:
        unpack(adjustable_fat_init),
        model=PATHS["float_model"],
        train=split_file("train"),
        val=split_file("val"),
        info=PATHS["info"],
    output:
        ckpt=directory("results/{dataset}/{model}/adjustable/{target}/ckpt"),
        best_ckpt=directory("results/{dataset}/{model}/adjustable/{target}/best_ckpt"),
        initial_thresholds="results/{dataset}/{model}/adjustable/{target}/initial_thresholds.json",
        model_info=PATHS["adjustable_model_info"],
        quant_info=PATHS["adjustable_quant_info"],
        history="results/{dataset}/{model}/adjustable/{target}/history.csv",
        model=PATHS["adjustable_model"],
        packed="results/{dataset}/{model}/adjustable/{target}/weights.packed",
        score="results/{dataset}/{model}/adjustable/{target}/score.json",
        summary="results/{dataset}/{model}/adjustable/{target}/adjustable.json",
    log:
        "logs/adjustable/{dataset}/{model}/{target}.log",
    benchmark:
        "results/benchmarks/adjustable/{dataset}/{model}/{target}.tsv"
    priority: 10  # on the longest chain (train, fat, adjustable): first when cores free
    conda:
        ENV
    threads: ADJUSTABLE["threads"]
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        custom=custom_code,
        settings=lambda wildcards: adjustable_settings(wildcards.target),
        seed=config["seed"],
        code=code_digest("adjustable"),
    script:
        "../scripts/adjustable.py"


rule adjustable_tflite:
    """The deployable int8 TFLite model of a target (each weight channel on its own grid,
    8-bit activations), checked against the simulation of that configuration."""
    input:
        float_model=PATHS["float_model"],
        model=PATHS["adjustable_model"],
        quant_info=PATHS["adjustable_quant_info"],
        model_info=PATHS["adjustable_model_info"],
        train=split_file("train"),
        val=split_file("val"),
        info=PATHS["info"],
    output:
        tflite="results/{dataset}/{model}/adjustable/{target}/model.tflite",
        check="results/{dataset}/{model}/adjustable/{target}/tflite.json",
        score="results/{dataset}/{model}/adjustable/{target}/score_int8.json",
    log:
        "logs/adjustable_tflite/{dataset}/{model}/{target}.log",
    priority: 10  # on the longest chain (train, fat, adjustable): first when cores free
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        custom=custom_code,
        seed=config["seed"],
        check_images=ADJUSTABLE["check_images"],
        code=code_digest("adjustable_tflite"),
    script:
        "../scripts/adjustable_tflite.py"
