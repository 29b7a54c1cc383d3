rule download:
    """Fetch the dataset's files from the configured mirrors, checksummed, atomically."""
    output:
        manifest="data/{dataset}/raw/manifest.json",
    log:
        "logs/download/{dataset}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        mirrors=config["dataset"].get("mirrors"),
        checksums=config["dataset"]["checksums"],
        retries=config["dataset"]["retries"],
        timeout=config["dataset"]["timeout_s"],
    script:
        "../scripts/download.py"
