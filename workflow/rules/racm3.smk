# The RA-CM3 baseline (paper appendix B.1): an image-level retriever over the retrieval corpus (CLIP image
# embeddings of the configured corpora, one job per source shard; the mini profile's caption-similarity
# stand-in otherwise), then fine-tuning of the base model with the retrieved reference image's tokens as a
# prompt prefix. Generation goes through rules/generate.smk (method racm3).


rule embed_images:
    input:
        unpack(source_data),
        unpack(racm3_clip_input),
    output:
        emb=f"{RESULTS}/clip/{{split}}/clip-{{shard}}-of-{{num_shards}}.npz",
        meta=f"{RESULTS}/clip/{{split}}/clip-{{shard}}-of-{{num_shards}}.json",
    wildcard_constraints:
        shard=r"\d{5}",
        num_shards=r"\d{5}",
    params:
        gpu=on_gpu,
        source=lambda wildcards: json.dumps(CORPORA[wildcards.split]["source"]),
        out=lambda wildcards, output: os.path.dirname(output.emb),
        clip=clip_flags(),
        batch=RETRIEVAL["tokenise_batch_size"],
        device=config["device"],
    log:
        log_path("embed_images", "{split}/{shard}-of-{num_shards}"),
    benchmark:
        jobstats_path("embed_images", "{split}/{shard}-of-{num_shards}")
    threads: 1
    resources:
        gpu=1,
        mem_mb=job_mem_mb("encode", parameters=CLIP_PARAMETERS, batch_size=RETRIEVAL["tokenise_batch_size"], image_size=224, images=lambda wc: shard_images(wc.split)),
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag embed-images --source {params.source:q} "
        "--shard $((10#{wildcards.shard})) --num-shards $((10#{wildcards.num_shards})) {params.clip} "
        "--batch-size {params.batch} --device {params.device} --out {params.out} > {log} 2>&1"


rule build_image_index:
    input:
        unpack(image_index_inputs),
        model=BASE_MODEL,
    output:
        directory(IMAGE_INDEX),
    params:
        retriever=image_index_flags,
    log:
        log_path("build_image_index"),
    benchmark:
        jobstats_path("build_image_index")
    threads: 1
    resources:
        mem_mb=IMAGE_INDEX_MEM_MB,
    shell:
        "arrag build-image-index --model {input.model} --codes {input.codes} {params.retriever} "
        "--out {output} > {log} 2>&1"


rule train_racm3:
    input:
        unpack(pairs_inputs),
        unpack(racm3_clip_input),  # the index reloads its CLIP from these weights
        model=BASE_MODEL,
        index=IMAGE_INDEX,
    output:
        directory(RACM3_MODEL),
    params:
        gpu=on_gpu,
        pairs=pairs_flags,
        launch=launcher(RACM3["processes"]),
        training=settings_flags("--set", RACM3["training"]),
        device=config["device"],
    log:
        log_path("train_racm3"),
    benchmark:
        jobstats_path("train_racm3")
    threads: gpu_job_threads
    resources:
        gpu=RACM3["processes"],
        mem_mb=TRAIN_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} {params.launch} train-racm3 --model {input.model} {params.pairs} "
        "--image-index {input.index} --device {params.device} --out {output} {params.training} > {log} 2>&1"
