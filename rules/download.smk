rule download:
    """Fetch the dataset's files from the configured mirrors, checksummed, atomically."""
    output:
        manifest="data/{dataset}/raw/manifest.json",
    params:
        mirrors=config["dataset"]["mirrors"],
        retries=config["dataset"]["retries"],
        timeout=config["dataset"]["timeout_s"],
    log:
        "logs/download/{dataset}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/download.py"
