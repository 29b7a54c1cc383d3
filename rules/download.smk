rule download:
    """Fetch the dataset's files from the configured mirrors, checksummed, atomically."""
    output:
        manifest=PATHS["raw_manifest"],
    log:
        "logs/download/{dataset}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        # what the data is; where it comes from (mirrors, retries, timeout) is read from
        # the config by the script and does not rerun anything
        checksums=config["dataset"]["checksums"],
        code=code_digest("download"),
    script:
        "../scripts/download.py"
