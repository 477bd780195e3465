# The patch-level retrieval database: tokenise the corpus in shards (scatter), build one PatchDatabase
# from all shards (gather), and measure retrieval accuracy on held-out images (paper Figure 6). Corpora that
# live on the Hugging Face Hub are fetched first (download_dataset, on the login node).


rule download_dataset:
    output:
        directory(os.path.join(config["downloads"]["dir"], "{dataset}")),
    wildcard_constraints:
        dataset="|".join(DATASETS) or "(?!)",
    params:
        repo=lambda wildcards: DATASETS[wildcards.dataset]["repo"],
        revision=lambda wildcards: DATASETS[wildcards.dataset]["revision"],
        include=lambda wildcards: DATASETS[wildcards.dataset]["include"],
        lock=lambda wildcards: lock_path(f"dataset-{wildcards.dataset}"),
        mirror=mirror_flag(),
    log:
        log_path("download_dataset", "{dataset}"),
    benchmark:
        jobstats_path("download_dataset", "{dataset}")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    retries: 3  # a dropped connection: the rerun resumes in <out>.partial/
    shell:
        "arrag download dataset --repo {params.repo:q} --revision {params.revision:q} --include {params.include:q} "
        "--lock {params.lock:q} {params.mirror} --out {output:q} > {log} 2>&1"

rule tokenise_shard:
    input:
        unpack(tokenise_inputs),
    output:
        codes=f"{RESULTS}/codes/{{split}}/codes-{{shard}}-of-{{num_shards}}.npz",
        meta=f"{RESULTS}/codes/{{split}}/codes-{{shard}}-of-{{num_shards}}.json",
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
        log_path("tokenise_shard", "{split}/{shard}-of-{num_shards}"),
    benchmark:
        jobstats_path("tokenise_shard", "{split}/{shard}-of-{num_shards}")
    threads: 1
    resources:
        gpu=1,
        mem_mb=job_mem_mb("encode", parameters=MODEL_PARAMETERS, batch_size=RETRIEVAL["tokenise_batch_size"], image_size=IMAGE_SIZE, images=lambda wc: shard_images(wc.split)),
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag tokenise --model {input.model} --source {params.source:q} "
        "--shard $((10#{wildcards.shard})) --num-shards $((10#{wildcards.num_shards})) --out {params.out} "
        "--batch-size {params.batch} --device {params.device} > {log} 2>&1"


rule build_database:
    input:
        model=BASE_MODEL,
        codes=corpus_codes(),
        exclusions=EXCLUSIONS,  # the benchmark images the contamination check found: left out
    output:
        directory(DATABASE),
    params:
        layout=f"--hops {RETRIEVAL['hops']}" + ("" if RETRIEVAL["causal"] else " --full"),
        index=RETRIEVAL["index"],  # an enum
        index_params=settings_flags("--param", RETRIEVAL["index_params"]),
    log:
        log_path("build_database"),
    benchmark:
        jobstats_path("build_database")
    threads: cpu_job_threads
    resources:
        mem_mb=job_mem_mb("build_database", entries=corpus_entries(), index=RETRIEVAL["index"], num_codes=NUM_CODES, neighbours=NEIGHBOURS),
    shell:
        "OMP_NUM_THREADS={threads} arrag build-db --model {input.model} --codes {input.codes} {params.layout} "
        "--exclude {input.exclusions} --index {params.index} {params.index_params} --out {output} > {log} 2>&1"


rule retrieval_accuracy:
    # Figure 6 on `retrieval.accuracy.queries`: held-out images searched here, or FAiD's training set (the paper's)
    input:
        unpack(retrieval_accuracy_inputs),
        model=BASE_MODEL,
        db=DATABASE,
    output:
        csv=f"{RESULTS}/tables/retrieval_accuracy.csv",
        md=f"{RESULTS}/tables/retrieval_accuracy.md",
        tex=f"{RESULTS}/tables/retrieval_accuracy.tex",
        json=f"{RESULTS}/tables/retrieval_accuracy.json",
        png=report(f"{RESULTS}/figures/retrieval_accuracy.png", caption="../report/retrieval_accuracy.rst",
                   category="Retrieval"),
    params:
        k=RETRIEVAL["accuracy"]["k"],
        max_queries=RETRIEVAL["accuracy"]["max_queries"],
        queries=retrieval_accuracy_flags,
    log:
        log_path("retrieval_accuracy"),
    benchmark:
        jobstats_path("retrieval_accuracy")
    threads: workflow.cores
    resources:
        mem_mb=SEARCH_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} arrag retrieval-accuracy --model {input.model} --db {input.db} "
        "{params.queries} --k {params.k} --max-queries {params.max_queries} --out-csv {output.csv} "
        "--out-json {output.json} --out-png {output.png} > {log} 2>&1"


rule bench_retrieval:
    # Not part of `all`: `snakemake --cores all bench_retrieval` measures the index backends side by side.
    input:
        model=BASE_MODEL,
        codes=corpus_codes(),
        queries=heldout_codes(),
    output:
        json=f"{RESULTS}/bench/retrieval.json",
        md=f"{RESULTS}/bench/retrieval.md",
    params:
        backends=" ".join(flag("--backend", b) for b in RETRIEVAL["bench"]["backends"]),
        min_entries=RETRIEVAL["bench"]["min_entries"],
        hops=RETRIEVAL["hops"],
    log:
        log_path("bench_retrieval"),
    benchmark:
        jobstats_path("bench_retrieval")
    threads: workflow.cores
    resources:
        mem_mb=job_mem_mb("build_database", entries=corpus_entries(), index="flat", num_codes=NUM_CODES, neighbours=NEIGHBOURS),
    shell:
        "OMP_NUM_THREADS={threads} arrag bench retrieval --model {input.model} --codes {input.codes} "
        "--query-codes {input.queries} {params.backends} --authors-baseline --hops {params.hops} "
        "--min-entries {params.min_entries} --out-json {output.json} --out-md {output.md} > {log} 2>&1"
