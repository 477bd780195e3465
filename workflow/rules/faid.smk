# FAiD (paper section 3.3, appendix B.3): the training set of retrieved candidates for the fine-tuning
# split, training of the FAiD parameters only (backbone frozen), and the sweep over hop sets x module
# counts (paper Figure 7 right). Generation with the trained FAiD goes through rules/generate.smk.


rule faid_trainset:
    input:
        unpack(pairs_inputs),
        model=BASE_MODEL,
        db=DATABASE,
    output:
        directory(FAID_TRAINSET),
    params:
        gpu=on_gpu,
        pairs=pairs_flags,
        k=FAID["training"]["k"],
        # the training split is the database's own source (mini world): leave each image's own entries out
        exclude_self=(
            "--exclude-self"
            if FAID["trainset_split"] == RETRIEVAL["source"] and not RETRIEVAL["corpora"] and not FINETUNE_PAIRS
            else ""
        ),
        device=config["device"],
        db_devices=db_devices_flag(),
    log:
        log_path("faid_trainset"),
    benchmark:
        jobstats_path("faid_trainset")
    threads: gpu_job_threads
    resources:
        gpu=DB_GPUS,
        mem_mb=SEARCH_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag faid-trainset --model {input.model} --db {input.db} {params.pairs} "
        "--k {params.k} {params.exclude_self} {params.db_devices} --device {params.device} --out {output} > {log} 2>&1"


rule train_faid:
    input:
        model=BASE_MODEL,
        db=DATABASE,
        trainset=FAID_TRAINSET,
    output:
        directory(FAID_MODEL),
    params:
        gpu=on_gpu,
        launch=launcher(FAID["processes"]),
        training=settings_flags("--set", FAID["training"]),
    log:
        log_path("train_faid"),
    benchmark:
        jobstats_path("train_faid")
    threads: gpu_job_threads
    resources:
        gpu=FAID["processes"],
        mem_mb=TRAIN_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} {params.launch} train-faid --model {input.model} --trainset {input.trainset} "
        "--db {input.db} --out {output} {params.training} > {log} 2>&1"


rule train_faid_sweep:
    input:
        model=BASE_MODEL,
        db=DATABASE,
        trainset=FAID_TRAINSET,
    output:
        directory(f"{RESULTS}/models/sweep_faid/{FAID_SWEEP.wildcard_pattern}"),
    params:
        gpu=on_gpu,
        training=settings_flags("--set", FAID["training"] | FAID["sweep"]["training"]),
    log:
        log_path("train_faid_sweep", FAID_SWEEP.wildcard_pattern),
    benchmark:
        jobstats_path("train_faid_sweep", FAID_SWEEP.wildcard_pattern)
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag train-faid --model {input.model} --trainset {input.trainset} "
        "--db {input.db} --out {output} {params.training} --set hops={wildcards.hops} --set every={wildcards.every} "
        "> {log} 2>&1"


rule generate_faid_sweep:
    input:
        model=BASE_MODEL,
        db=DATABASE,
        faid=rules.train_faid_sweep.output[0],
        prompts=PROMPT_SETS[SWEEP_PROMPTS]["file"],
    output:
        generated(f"sweep_faid/{FAID_SWEEP.wildcard_pattern}", SWEEP_PROMPTS),
    params:
        gpu=on_gpu,
        prompt_set=prompt_set_flags(SWEEP_PROMPTS, n=images_per_prompt("sweep_faid")),
        out=lambda wildcards, output: os.path.dirname(output[0]),
        sampling=sampling_flags(),
        method=lambda wildcards, input: method_flags("faid", input),
    log:
        log_path("generate_faid_sweep", FAID_SWEEP.wildcard_pattern),
    benchmark:
        jobstats_path("generate_faid_sweep", FAID_SWEEP.wildcard_pattern)
    threads: gpu_job_threads
    resources:
        gpu=DB_GPUS,
        mem_mb=SEARCH_MEM_MB,
    shell:
        generation_command()


rule sweep_faid:
    input:
        expand(f"{RESULTS}/scores/sweep_faid/{{point}}/{SWEEP_SCORE_FILE}", point=FAID_SWEEP.instance_patterns),
    output:
        csv=f"{RESULTS}/tables/sweep_faid.csv",
        md=f"{RESULTS}/tables/sweep_faid.md",  # the scores as a grid (also .tex)
        tex=f"{RESULTS}/tables/sweep_faid.tex",
        png=report(f"{RESULTS}/figures/sweep_faid.png", caption="../report/sweep_faid.rst", category="Sweeps"),
    params:
        title=f"FAiD sweep, {SWEEP_METRIC_LABEL} ({config['profile']} profile; modules = layers / every)",
        metric=SWEEPS["score"],
        records=sweep_records_flag,
    log:
        log_path("sweep_faid"),
    benchmark:
        jobstats_path("sweep_faid")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag sweep-table --summary {input} {params.records} --metric {params.metric} --x every --y hops --title {params.title:q} "
        "--out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
