# Image generation in GenEval's folder layout (<00000>/metadata.jsonl + samples/0000.png), and sample grids.
# Each job resumes: finished prompt folders are kept; generation.json is written last.


rule generate_geneval:
    input:
        model=f"{RESULTS}/models/base",
        prompts=f"{RESULTS}/world/geneval/evaluation_metadata.jsonl",
    output:
        f"{RESULTS}/images/vanilla/geneval/generation.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        n=config["generation"]["images_per_prompt"],
        sampling=sampling_flags(),
    log:
        log_path("generate_geneval_vanilla"),
    benchmark:
        benchmark_path("generate_geneval_vanilla")
    conda:
        "../envs/arrag.yaml"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
    shell:
        "OMP_NUM_THREADS={threads} arrag generate-benchmark --model {input.model} --prompts {input.prompts} "
        "--n {params.n} --out {params.out} {params.sampling} > {log} 2>&1"


rule generate_reference:
    input:
        model=f"{RESULTS}/models/base",
        prompts=f"{RESULTS}/world/reference/metadata.jsonl",
    output:
        f"{RESULTS}/images/vanilla/reference/generation.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        limit=config["generation"]["reference_prompts"],
        sampling=sampling_flags(),
    log:
        log_path("generate_reference_vanilla"),
    benchmark:
        benchmark_path("generate_reference_vanilla")
    conda:
        "../envs/arrag.yaml"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
    shell:
        "OMP_NUM_THREADS={threads} arrag generate-benchmark --model {input.model} --prompts {input.prompts} "
        "--prompt-field caption --limit {params.limit} --n 1 --out {params.out} {params.sampling} > {log} 2>&1"


rule sample_grid:
    input:
        f"{RESULTS}/images/vanilla/geneval/generation.json",
    output:
        report(f"{RESULTS}/figures/samples_vanilla.png", caption="../report/samples.rst", category="Samples"),
    params:
        images=lambda wildcards, input: os.path.dirname(input[0]),
    log:
        log_path("sample_grid_vanilla"),
    benchmark:
        benchmark_path("sample_grid_vanilla")
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "arrag grid --images {params.images} --out {output} > {log} 2>&1"
