# The contamination check: benchmark images must not be in the retrieval database or the fine-tuning pairs (the
# paper excludes "any samples included in the testing set ... to prevent data leakage"). Every shard of every
# checked source and reference set is hashed (pixel digest, pHash, colour thumbnail) as tokenisation sees it;
# one job compares them and writes the exclusion list that build_database, build_image_index, faid_trainset and
# train_racm3 apply, and the table of what it found (arrag.data.contamination).


rule hash_images:
    input:
        unpack(hash_inputs),
    output:
        npz=f"{RESULTS}/hashes/{{split}}/hashes-{{shard}}-of-{{num_shards}}.npz",
        meta=f"{RESULTS}/hashes/{{split}}/hashes-{{shard}}-of-{{num_shards}}.json",
    wildcard_constraints:
        shard=r"\d{5}",
        num_shards=r"\d{5}",
    params:
        source=hash_source,
        out=lambda wildcards, output: os.path.dirname(output.npz),
        batch=CONTAMINATION["batch_size"],
    log:
        log_path("hash_images", "{split}/{shard}-of-{num_shards}"),
    benchmark:
        jobstats_path("hash_images", "{split}/{shard}-of-{num_shards}")
    threads: 1
    resources:
        mem_mb=job_mem_mb("encode", parameters=0, batch_size=CONTAMINATION["batch_size"], image_size=IMAGE_SIZE, images=lambda wc: shard_images(wc.split)),
    shell:
        "OMP_NUM_THREADS={threads} arrag hash-images --model {input.model} --source {params.source:q} "
        "--shard $((10#{wildcards.shard})) --num-shards $((10#{wildcards.num_shards})) "
        "--batch-size {params.batch} --out {params.out} > {log} 2>&1"


rule contamination:
    input:
        references=hash_shards(REFERENCE_SETS),
        sources=hash_shards(CHECKED_SOURCES),
    output:
        exclusions=EXCLUSIONS,
        **table_outputs("contamination", caption="../report/contamination.rst"),
    params:
        sets=contamination_flags,
        bits=CONTAMINATION["phash_bits"],
        rms=CONTAMINATION["thumbnail_rms"],
        table=lambda wildcards, output: table_prefix(output),
    log:
        log_path("contamination"),
    benchmark:
        jobstats_path("contamination")
    threads: 1
    resources:
        mem_mb=job_mem_mb("contamination", reference_images=REFERENCE_IMAGES, shard_images=max(shard_images(n) for n in CHECKED_SOURCES)),
    shell:
        "OMP_NUM_THREADS={threads} arrag contamination {params.sets} --phash-bits {params.bits} "
        "--thumbnail-rms {params.rms} --out {output.exclusions} --table {params.table} > {log} 2>&1"
