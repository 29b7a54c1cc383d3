rule tflite:
    """Convert the float model to TFLite: fp32, or full-int8 post-training quantization
    calibrated on training images."""
    input:
        model="results/{dataset}/{model}/float/model.keras",
        train=split_file("train"),
        info="data/{dataset}/splits/info.json",
    output:
        tflite="results/{dataset}/{model}/tflite/{fmt}.tflite",
    log:
        "logs/tflite/{dataset}/{model}/{fmt}.log",
    benchmark:
        "results/benchmarks/tflite/{dataset}/{model}/{fmt}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        calibration_images=config["tflite"]["calibration_images"],
        seed=config["seed"],
        code=code_digest("tflite"),
    script:
        "../scripts/tflite.py"
