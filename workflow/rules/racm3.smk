# The RA-CM3 baseline (paper appendix B.1): an image-level retriever over the retrieval corpus (the mini
# profile's caption-similarity stand-in for CLIP), then fine-tuning of the base model with the retrieved
# reference image's tokens as a prompt prefix. Generation goes through rules/generate.smk (method racm3).


rule build_image_index:
    input:
        model=f"{RESULTS}/models/base",
        captions=f"{RESULTS}/world/{RETRIEVAL['source']}/metadata.jsonl",
        codes=corpus_codes(),
    output:
        directory(f"{RESULTS}/retrieval/image_index"),
    log:
        log_path("build_image_index"),
    benchmark:
        benchmark_path("build_image_index")
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "arrag build-image-index --model {input.model} --captions {input.captions} --codes {input.codes} "
        "--out {output} > {log} 2>&1"


rule train_racm3:
    input:
        unpack(pairs_inputs),
        model=f"{RESULTS}/models/base",
        index=f"{RESULTS}/retrieval/image_index",
    output:
        directory(f"{RESULTS}/models/racm3"),
    params:
        gpu=on_gpu,
        pairs=pairs_flags,
        training=settings_flags("--set", config["racm3"]["training"]),
        device=config["device"],
    log:
        log_path("train_racm3"),
    benchmark:
        benchmark_path("train_racm3")
    conda:
        "../envs/arrag.yaml"
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=6000,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag train-racm3 --model {input.model} {params.pairs} "
        "--image-index {input.index} --device {params.device} --out {output} {params.training} > {log} 2>&1"
