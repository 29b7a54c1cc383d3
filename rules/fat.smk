rule fat:
    """FAT: the float model as a fake-quant model in the TFLite manner (BN folded, weights
    and activations fake-quantized as int8 TFLite runs them), its thresholds calibrated,
    then trained to match the float logits on unlabelled training images."""
    input:
        model=PATHS["float_model"],
        train=split_file("train"),
        val=split_file("val"),
        info=PATHS["info"],
    output:
        ckpt=directory("results/{dataset}/{model}/fat/{scheme}/ckpt"),
        best_ckpt=directory("results/{dataset}/{model}/fat/{scheme}/best_ckpt"),
        thresholds=PATHS["fat_thresholds"],
        model=PATHS["fat_model"],
        history="results/{dataset}/{model}/fat/{scheme}/history.csv",
        summary="results/{dataset}/{model}/fat/{scheme}/fat.json",
    log:
        "logs/fat/{dataset}/{model}/{scheme}.log",
    benchmark:
        "results/benchmarks/fat/{dataset}/{model}/{scheme}.tsv"
    priority: 10  # on the longest chain (train, fat, adjustable): first when cores free
    conda:
        ENV
    threads: FAT["threads"]
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        custom=custom_code,
        fat=without(FAT, "schemes", "simulate", "threads", "check_images"),
        seed=config["seed"],
        code=code_digest("fat"),
    script:
        "../scripts/fat.py"


rule fat_tflite:
    """The trained fake-quant model as a fully int8 TFLite model with its trained ranges,
    checked against the fake-quant model on held-out images."""
    input:
        model=PATHS["fat_model"],
        train=split_file("train"),
        val=split_file("val"),
        info=PATHS["info"],
    output:
        tflite="results/{dataset}/{model}/fat/{scheme}/model.tflite",
        check="results/{dataset}/{model}/fat/{scheme}/tflite.json",
    log:
        "logs/fat_tflite/{dataset}/{model}/{scheme}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        custom=custom_code,
        seed=config["seed"],
        check_images=FAT["check_images"],
        code=code_digest("fat_tflite"),
    script:
        "../scripts/fat_tflite.py"
