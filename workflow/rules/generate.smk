# Image generation per method and prompt set in GenEval's folder layout (<00000>/metadata.jsonl +
# samples/0000.png), sample grids, over-copying, attribution, and the inference-time benchmark (Table 4).
# Each job resumes: finished prompt folders are kept; generation.json is written last.


rule generate:
    # One rule for every prompt set (PROMPT_SETS in common/config.smk): GenEval, the reference captions (mini) or
    # MJHQ-30K (paper) for Table 3, and DPG-Bench; each split into generation.num_shards jobs (one per GPU)
    # that write their own prompt folders into the same folder.
    input:
        unpack(generation_inputs),
        prompts=lambda wildcards: PROMPT_SETS[wildcards.prompts]["file"],
    output:
        f"{RESULTS}/images/{{method}}/{{prompts}}/shards/{{shard}}-of-{{num_shards}}.json",
    wildcard_constraints:
        prompts="|".join(PROMPT_SETS),
        shard=r"\d{5}",
        num_shards=r"\d{5}",
    params:
        gpu=on_gpu,
        out=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        prompt_set=lambda wildcards: prompt_set_flags(wildcards.prompts),
        sampling=sampling_flags(),
        method=lambda wildcards, input: method_flags(wildcards.method, input),
    log:
        log_path("generate", "{method}/{prompts}/{shard}-of-{num_shards}"),
    benchmark:
        jobstats_path("generate", "{method}/{prompts}/{shard}-of-{num_shards}")
    threads: gpu_job_threads
    resources:
        gpu=generation_gpus,
        mem_mb=SEARCH_MEM_MB,
    shell:
        generation_command(sharded=True)


rule finish_generation:
    # All shards done: check the folder (every prompt, every sample) and write generation.json.
    input:
        prompts=lambda wildcards: PROMPT_SETS[wildcards.prompts]["file"],
        shards=generation_shards,
    output:
        generated("{method}", "{prompts}"),
    wildcard_constraints:
        prompts="|".join(PROMPT_SETS),
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        prompt_set=lambda wildcards: prompt_set_flags(wildcards.prompts, field=False),
        num_shards=GENERATION_SHARDS,
    log:
        log_path("finish_generation", "{method}/{prompts}"),
    benchmark:
        jobstats_path("finish_generation", "{method}/{prompts}")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag finish-benchmark --prompts {input.prompts} {params.prompt_set} --num-shards {params.num_shards} "
        "--out {params.out} > {log} 2>&1"


rule sample_grid:
    input:
        generated("{method}", "geneval"),
    output:
        report(f"{RESULTS}/figures/samples_{{method}}.png", caption="../report/samples.rst", category="Samples"),
    params:
        images=lambda wildcards, input: os.path.dirname(input[0]),
    log:
        log_path("sample_grid", "{method}"),
    benchmark:
        jobstats_path("sample_grid", "{method}")
    threads: 1
    resources:
        mem_mb=job_mem_mb("light", image_size=IMAGE_SIZE, images=16),
    shell:
        "arrag grid --images {params.images} --out {output} > {log} 2>&1"


rule over_copying:
    input:
        expand(rules.finish_generation.output[0], method=RETRIEVAL_METHODS, prompts="geneval"),
    output:
        **table_outputs("over_copying", caption="../report/over_copying.rst"),
    params:
        results=lambda wildcards, input: " ".join(f"--result {os.path.dirname(p)}" for p in input),
        labels=" ".join(f"--label {m}" for m in RETRIEVAL_METHODS),
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("over_copying"),
    benchmark:
        jobstats_path("over_copying")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag table over_copying {params.results} {params.labels} --out {params.out} > {log} 2>&1"


rule attribution:
    input:
        expand(rules.finish_generation.output[0], method=RETRIEVAL_METHODS, prompts="geneval"),
        db=DATABASE,
    output:
        report(f"{RESULTS}/figures/attribution.png", caption="../report/attribution.rst", category="Over-copying"),
    params:
        folders=lambda wildcards, input: " ".join(f"--images {os.path.dirname(p)}" for p in input[:-1]),
        labels=" ".join(f"--label {m}" for m in RETRIEVAL_METHODS),
        corpus=attribution_corpus,
        size=ATTRIBUTION_SIZE,
    log:
        log_path("attribution"),
    benchmark:
        jobstats_path("attribution")
    threads: 1
    resources:
        mem_mb=job_mem_mb("light", image_size=max(IMAGE_SIZE, ATTRIBUTION_SIZE), images=64),
    shell:
        "arrag attribution {params.folders} {params.labels} {params.corpus} --size {params.size} "
        "--out {output} > {log} 2>&1"


rule bench_generate:
    # The configured methods side by side; all cores, so no other job runs beside it and skews the times.
    input:
        unpack(bench_generate_inputs),
        prompts=PROMPT_SETS["geneval"]["file"],
    output:
        json=f"{RESULTS}/bench/generate.json",
        md=f"{RESULTS}/bench/generate.md",
    params:
        gpu=on_gpu,
        methods=bench_generate_flags(METHODS),
        daid=daid_flags(),
        bench=bench_flags(),
    log:
        log_path("bench_generate"),
    benchmark:
        jobstats_path("bench_generate")
    threads: workflow.cores
    resources:
        gpu=DB_GPUS,
        mem_mb=SEARCH_MEM_MB,
    shell:
        bench_generate_command()


rule bench_generate_showo:
    # Show-o's rows of Table 4 (`backbones: [janus, showo]`): its configured methods side by side on its own model,
    # database and FAiD, with the same prompts and settings as bench_generate; all cores, as there.
    input:
        unpack(bench_generate_showo_inputs),
        prompts=PROMPT_SETS["geneval"]["file"],
    output:
        json=f"{RESULTS}/bench/generate_showo.json",
        md=f"{RESULTS}/bench/generate_showo.md",
    params:
        gpu=on_gpu,
        methods=bench_generate_flags(list(SHOWO_RUNS.values())),
        daid=daid_flags(),
        bench=bench_flags(),
    log:
        log_path("bench_generate_showo"),
    benchmark:
        jobstats_path("bench_generate_showo")
    threads: workflow.cores
    resources:
        gpu=DB_GPUS,
        mem_mb=SEARCH_MEM_MB,
    shell:
        bench_generate_command()


rule inference_time_table:
    # one row per method of each backbone (bench_results), each against its backbone's vanilla row
    input:
        bench_results(),
    output:
        **table_outputs("inference_time", caption="../report/inference_time.rst"),
    params:
        results=lambda wildcards, input: " ".join(flag("--result", path) for path in input),
        paper=PAPER_ROWS,
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("inference_time_table"),
    benchmark:
        jobstats_path("inference_time_table")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag table inference_time {params.results} {params.paper} --out {params.out} > {log} 2>&1"
