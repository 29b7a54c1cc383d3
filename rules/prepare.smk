rule prepare:
    """Train / validation (seeded hold-out from train) / test splits as .npz, plus info.json."""
    input:
        manifest=PATHS["raw_manifest"],
        lists=image_lists,
    output:
        train=split_file("train"),
        val=split_file("val"),
        test=split_file("test"),
        info=PATHS["info"],
    log:
        "logs/prepare/{dataset}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        dataset=without(
            config["dataset"], "mirrors", "retries", "timeout_s", "checksums", "augment"
        ),
        seed=config["seed"],
        code=code_digest("prepare"),
    script:
        "../scripts/prepare.py"
