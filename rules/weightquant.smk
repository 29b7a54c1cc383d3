rule extract_weights:
    """The trained model's arrays by layer and role, plus what rebuilds it, as a pickle."""
    input:
        model=PATHS["float_model"],
    output:
        weights=PATHS["float_weights"],
    log:
        "logs/extract_weights/{dataset}/{model}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        custom=custom_code,
        code=code_digest("extract_weights"),
    script:
        "../scripts/extract_weights.py"


rule weightquant:
    """Weight-only bin or fixed-point quantization of every trainable variable
    (quantize, then dequantize: a float checkpoint that carries the quantization error)."""
    input:
        weights=PATHS["float_weights"],
    output:
        weights=weightquant_checkpoint(
            "results/{dataset}/{model}/weightquant/{algorithm}_{bits}bits/weights.pickle"
        ),
        errors=PATHS["weightquant_errors"],
    log:
        "logs/weightquant/{dataset}/{model}/{algorithm}_{bits}bits.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        keep_batchnorm_float=WEIGHTQUANT["keep_batchnorm_float"],
        keep_bias_float=WEIGHTQUANT["keep_bias_float"],
        # the job imports only its own algorithm's module (by name)
        code=lambda w: code_digest("weightquant", f"quantflow.quant.weightonly.{w.algorithm}"),
    script:
        "../scripts/weightquant.py"


rule weightonly_tflite:
    """A fixed-point checkpoint of at most 8 bits as a deployable LiteRT model: its kernels
    stored as int8 (INT4 where the codes fit) behind DEQUANTIZE ops, float compute;
    checked against the checkpoint run by TensorFlow on held-out images."""
    input:
        weights="results/{dataset}/{model}/weightquant/fixed_{bits}bits/weights.pickle",
        errors="results/{dataset}/{model}/weightquant/fixed_{bits}bits/errors.json",
        val=split_file("val"),
        info=PATHS["info"],
    output:
        tflite="results/{dataset}/{model}/weightquant/fixed_{bits}bits/model.tflite",
        check="results/{dataset}/{model}/weightquant/fixed_{bits}bits/tflite.json",
    log:
        "logs/weightonly_tflite/{dataset}/{model}/fixed_{bits}bits.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        custom=custom_code,
        check_images=WEIGHTQUANT["check_images"],
        seed=config["seed"],
        code=code_digest("weightonly_tflite"),
    script:
        "../scripts/weightonly_tflite.py"
