rule tflite:
    """Convert the float model to TFLite with the converter: fp32, fp16, dynamic range,
    full-integer int8 (int8 or uint8 I/O) calibrated on training images (a sample, N, a
    percentage, or one class), or 16x8."""
    input:
        model=PATHS["float_model"],
        train=split_file("train"),
        info=PATHS["info"],
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
        custom=custom_code,
        conversion=tflite_params,
        code=code_digest("tflite"),
    script:
        "../scripts/tflite.py"


rule tflite_aeq:
    """int4-weight variants by ai-edge-quantizer (the converter has no int4), from the
    fp32 TFLite model: weight-only (float compute) or dynamic (int4 compute)."""
    input:
        fp32=PATHS["fp32_tflite"],
    output:
        tflite="results/{dataset}/{model}/tflite/{aeq}.tflite",
    log:
        "logs/tflite_aeq/{dataset}/{model}/{aeq}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_digest("tflite_aeq"),
    script:
        "../scripts/tflite_aeq.py"


rule tflite_aeq_static:
    """ai-edge-quantizer's static recipe from the fp32 TFLite model: int4 weights on
    CONV_2D and FULLY_CONNECTED, int8 elsewhere, int8 activations calibrated on the
    tflite-int8 calibration sample (as one batch)."""
    input:
        fp32=PATHS["fp32_tflite"],
        train=split_file("train"),
        info=PATHS["info"],
    output:
        tflite="results/{dataset}/{model}/tflite/{aeq_static}.tflite",
    log:
        "logs/tflite_aeq/{dataset}/{model}/{aeq_static}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        calibration_images=TFLITE["calibration_images"],
        seed=config["seed"],
        code=code_digest("tflite_aeq"),
    script:
        "../scripts/tflite_aeq.py"


rule tflite_float_fallback:
    """int8 post-training quantization with the k layers that tflite-int8's per-layer
    diagnosis finds worst left in float (the converter's selective quantization)."""
    input:
        model=PATHS["float_model"],
        train=split_file("train"),
        info=PATHS["info"],
        diagnosis="results/{dataset}/{model}/eval/tflite-int8/diagnosis.json",
    output:
        tflite="results/{dataset}/{model}/tflite/int8-float{k}.tflite",
    log:
        "logs/tflite_float_fallback/{dataset}/{model}/{k}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        custom=custom_code,
        calibration_images=TFLITE["calibration_images"],
        seed=config["seed"],
        code=code_digest("tflite_float_fallback"),
    script:
        "../scripts/tflite_float_fallback.py"
