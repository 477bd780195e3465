# Scoring generated images: GenEval rules with the configured detector (the mini profile's analytic
# shapes detector), per-image records in the official evaluator's JSONL schema, and Table 1 per method.


rule download_geneval_detector:
    output:
        MASK2FORMER,
    params:
        mirror=mirror_flag(),
    log:
        log_path("download_geneval_detector"),
    benchmark:
        jobstats_path("download_geneval_detector")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:  # URL and SHA-256 pin: arrag.evaluation.geneval_mask2former
        "arrag download geneval-detector {params.mirror} --out {output} > {log} 2>&1"


rule score_geneval:
    input:
        unpack(geneval_scoring_inputs),
    output:
        jsonl=f"{RESULTS}/scores/{{run}}/geneval_results.jsonl",
        summary=f"{RESULTS}/scores/{{run}}/geneval_summary.json",
    wildcard_constraints:
        run=r".+",  # a method (daid) or a sweep point (sweep_daid/weight~0.1/temperature~1.0)
    params:
        images=lambda wildcards, input: os.path.dirname(input.images),
        detector=geneval_detector_flags,
        arrag=arrag_on_gpu,
    log:
        log_path("score_geneval", "{run}"),
    benchmark:
        jobstats_path("score_geneval", "{run}")
    conda:
        None if GENEVAL["detector"] == "shapes" else "../envs/geneval.yaml"  # the benchmark's own environment
    threads: 1
    resources:
        mem_mb=scorer_mem_mb(GENEVAL["detector"], GENEVAL_PARAMETERS),
        gpu=0 if GENEVAL["detector"] == "shapes" else 1,
    shell:
        "{params.arrag} geneval --images {params.images} {params.detector} --out-jsonl {output.jsonl} "
        "--out-json {output.summary} > {log} 2>&1"


if VQ_CEILING:

    rule vq_ceiling:
        # The detector's ceiling: the VQ-VAE's reconstructions of ground-truth scenes of the GenEval prompts, scored
        # by score_geneval as the run "vq_reconstructions" (what a generator of the right tokens would score).
        input:
            prompts=PROMPT_SETS["geneval"]["file"],
            vq=VQ_MODEL,
        output:
            generated(VQ_CEILING_RUN, "geneval"),
        params:
            world=lambda wildcards, input: world_dir(input.prompts),
            out=lambda wildcards, output: os.path.dirname(output[0]),
            n=PROMPT_SETS["geneval"]["n"],
            seed=config["generation"]["seed"],
        log:
            log_path("vq_ceiling"),
        benchmark:
            jobstats_path("vq_ceiling")
        threads: cpu_job_threads
        resources:
            mem_mb=TRAIN_MEM_MB,
        shell:
            "OMP_NUM_THREADS={threads} arrag vq-ceiling --world {params.world} --vq {input.vq} --n {params.n} "
            "--seed {params.seed} --out {params.out} > {log} 2>&1"


rule geneval_table:
    input:
        **table_inputs("geneval_summary.json", "geneval", GENEVAL_TABLE_RUNS),
    output:
        **table_outputs("geneval", caption="../report/geneval.rst"),
    params:
        results=table_flags,
        records=table_records_flags,
        note=GENEVAL_NOTE,
        paper=PAPER_ROWS,
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("geneval_table"),
    benchmark:
        jobstats_path("geneval_table")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag table geneval {params.results} {params.records} {params.paper} --note {params.note:q} "
        "--out {params.out} > {log} 2>&1"


rule bench_scoring:
    # Not part of `all`: `snakemake --cores all bench_scoring` measures the mini profile's scorers (images/s).
    input:
        geneval=generated("vanilla", "geneval"),
        tiles=dpg_tiles("vanilla"),
        questions=MINI_DPG,
        images=generated("vanilla", "reference"),
        reference=world_split("reference"),
        features=FEATURES_MODEL,
    output:
        json=f"{RESULTS}/bench/scoring.json",
        md=f"{RESULTS}/bench/scoring.md",
    params:
        geneval=lambda wildcards, input: os.path.dirname(input.geneval),
        images=lambda wildcards, input: os.path.dirname(input.images),
        level=config["evaluation"]["fwd"]["level"],
        size=config["evaluation"]["fwd"]["size"],
    log:
        log_path("bench_scoring"),
    benchmark:
        jobstats_path("bench_scoring")
    threads: workflow.cores
    resources:
        mem_mb=fidelity_mem_mb(FIDELITY_IMAGES, paper_networks=False),
    shell:
        "OMP_NUM_THREADS={threads} arrag bench scoring --geneval {params.geneval} --dpg-tiles {input.tiles} "
        "--dpg-csv {input.questions}/dpg_bench.csv --fidelity-images {params.images} --reference {input.reference} "
        "--features {input.features} --fwd-level {params.level} --fwd-size {params.size} "
        "--out-json {output.json} --out-md {output.md} > {log} 2>&1"
