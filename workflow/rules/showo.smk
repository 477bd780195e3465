# The Show-o backbone (paper appendix B.2; `backbones: [janus, showo]`): the mini Show-o trained here or the
# published snapshots assembled, its own code shards, patch database (8-neighbour keys) and FAiD. Its images are
# made by rules/generate.smk's `generate` (runs showo, showo_daid, showo_faid: SHOWO_RUNS) and scored and tabled
# beside the Janus rows.

if SHOWO["source"] == "hub":

    localrules:
        download_showo_part,

    rule download_showo_part:
        # safetensors, configs and tokenizer files at the pinned commit (a branch is locked at the first download)
        output:
            directory(showo_part("{part}")),
        wildcard_constraints:
            part="showo|magvitv2|tokenizer",
        params:
            hub_id=lambda wildcards: SHOWO["hub"][wildcards.part]["hub_id"],
            revision=lambda wildcards: SHOWO["hub"][wildcards.part]["revision"],
            lock=lambda wildcards: lock_path(f"showo-{wildcards.part}"),
            mirror=mirror_flag(),
        log:
            log_path("download_showo_part", "{part}"),
        benchmark:
            jobstats_path("download_showo_part", "{part}")
        threads: 1
        resources:
            mem_mb=LIGHT_MEM_MB,
        retries: 3
        shell:
            "arrag download model --hub-id {params.hub_id:q} --revision {params.revision:q} --lock {params.lock:q} "
            "{params.mirror} --out {output} > {log} 2>&1"

    rule assemble_showo:
        input:
            showo=showo_part("showo"),
            magvitv2=showo_part("magvitv2"),
            tokenizer=showo_part("tokenizer"),
        output:
            directory(SHOWO_MODEL),
        log:
            log_path("assemble_showo"),
        benchmark:
            jobstats_path("assemble_showo")
        threads: 1
        resources:
            mem_mb=TRAIN_MEM_MB,
        shell:
            "arrag assemble-showo --showo {input.showo} --magvitv2 {input.magvitv2} --tokenizer {input.tokenizer} "
            "--out {output} > {log} 2>&1"

else:

    rule train_showo:
        input:
            images=world_split("train"),
        output:
            directory(SHOWO_MODEL),
        params:
            gpu=on_gpu,
            world=lambda wildcards, input: world_dir(input.images),
            spec=settings_flags("--spec", SHOWO["spec"]),
            training=settings_flags("--set", SHOWO["training"]),
        log:
            log_path("train_showo"),
        benchmark:
            jobstats_path("train_showo")
        threads: gpu_job_threads
        resources:
            gpu=1,
            mem_mb=TRAIN_MEM_MB,
        shell:
            "OMP_NUM_THREADS={threads} {params.gpu} arrag train-showo --world {params.world} --split train "
            "--out {output} {params.spec} {params.training} > {log} 2>&1"


rule tokenise_showo_shard:
    # as tokenise_shard, with Show-o's MAGVIT-v2
    input:
        unpack(showo_tokenise_inputs),
    output:
        codes=f"{RESULTS}/codes_showo/{{split}}/codes-{{shard}}-of-{{num_shards}}.npz",
        meta=f"{RESULTS}/codes_showo/{{split}}/codes-{{shard}}-of-{{num_shards}}.json",
    wildcard_constraints:
        shard=r"\d{5}",
        num_shards=r"\d{5}",
    params:
        gpu=on_gpu,
        source=tokenise_source,
        out=lambda wildcards, output: os.path.dirname(output.codes),
        batch=RETRIEVAL["tokenise_batch_size"],
        device=config["device"],
    log:
        log_path("tokenise_showo_shard", "{split}/{shard}-of-{num_shards}"),
    benchmark:
        jobstats_path("tokenise_showo_shard", "{split}/{shard}-of-{num_shards}")
    threads: 1
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag tokenise --model {input.model} --source {params.source:q} "
        "--shard $((10#{wildcards.shard})) --num-shards $((10#{wildcards.num_shards})) --out {params.out} "
        "--batch-size {params.batch} --device {params.device} > {log} 2>&1"


rule build_showo_database:
    # Show-o's own codes, full-ring (8-neighbour at one hop) keys: appendix B.2 queries all neighbours
    input:
        model=SHOWO_MODEL,
        codes=showo_corpus_codes(),
        exclusions=EXCLUSIONS,
    output:
        directory(SHOWO_DATABASE),
    params:
        index=RETRIEVAL["index"],
        index_params=settings_flags("--param", RETRIEVAL["index_params"]),
        hops=RETRIEVAL["hops"],
    log:
        log_path("build_showo_database"),
    benchmark:
        jobstats_path("build_showo_database")
    threads: cpu_job_threads
    resources:
        mem_mb=job_mem_mb("build_database", entries=corpus_entries(), index=RETRIEVAL["index"], num_codes=NUM_CODES, neighbours=NEIGHBOURS),
    shell:
        "OMP_NUM_THREADS={threads} arrag build-db --model {input.model} --codes {input.codes} --hops {params.hops} "
        "--full --exclude {input.exclusions} --index {params.index} {params.index_params} --out {output} > {log} 2>&1"


rule showo_faid_trainset:
    input:
        unpack(showo_pairs_inputs),
        model=SHOWO_MODEL,
        db=SHOWO_DATABASE,
    output:
        directory(SHOWO_FAID_TRAINSET),
    params:
        gpu=on_gpu,
        pairs=pairs_flags,
        k=FAID["training"]["k"],
        exclude_self=(
            "--exclude-self"
            if FAID["trainset_split"] == RETRIEVAL["source"] and not RETRIEVAL["corpora"] and not FINETUNE_PAIRS
            else ""
        ),
        device=config["device"],
    log:
        log_path("showo_faid_trainset"),
    benchmark:
        jobstats_path("showo_faid_trainset")
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=SEARCH_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag faid-trainset --model {input.model} --db {input.db} {params.pairs} "
        "--k {params.k} {params.exclude_self} --device {params.device} --out {output} > {log} 2>&1"


rule train_showo_faid:
    # modules after every decoder layer, Show-o's masked-token objective, one process
    input:
        model=SHOWO_MODEL,
        db=SHOWO_DATABASE,
        trainset=SHOWO_FAID_TRAINSET,
    output:
        directory(SHOWO_FAID_MODEL),
    params:
        gpu=on_gpu,
        training=settings_flags("--set", FAID["training"] | SHOWO["faid_training"]),
    log:
        log_path("train_showo_faid"),
    benchmark:
        jobstats_path("train_showo_faid")
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag train-faid --model {input.model} --trainset {input.trainset} "
        "--db {input.db} --out {output} {params.training} > {log} 2>&1"
