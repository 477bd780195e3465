# DAiD's hyper-parameter sweep (paper Figure 7 left): the sweeps' prompt set (SWEEP_PROMPTS: the first 10K MJHQ-30K
# prompts in the paper profiles, the GenEval prompts in the mini one) generated at every (weight, temperature) of
# config["sweeps"]["daid"], each scored as `sweeps.score` says (rule score_sweep_fid, or score_geneval), then one CSV
# and a heatmap. Points live under images/sweep_daid/weight~W/temperature~T/ (Snakemake's Paramspace).


rule generate_daid_sweep:
    input:
        model=BASE_MODEL,
        db=DATABASE,
        prompts=PROMPT_SETS[SWEEP_PROMPTS]["file"],
    output:
        generated(f"sweep_daid/{DAID_SWEEP.wildcard_pattern}", SWEEP_PROMPTS),
    params:
        gpu=on_gpu,
        prompt_set=prompt_set_flags(SWEEP_PROMPTS, n=images_per_prompt("sweep_daid")),
        out=lambda wildcards, output: os.path.dirname(output[0]),
        sampling=sampling_flags(),
        method=lambda wildcards, input: method_flags(
            "daid", input, weight=wildcards.weight, temperature=wildcards.temperature
        ),
    log:
        log_path("generate_daid_sweep", DAID_SWEEP.wildcard_pattern),
    benchmark:
        jobstats_path("generate_daid_sweep", DAID_SWEEP.wildcard_pattern)
    threads: gpu_job_threads
    resources:
        gpu=DB_GPUS,
        mem_mb=SEARCH_MEM_MB,
    shell:
        generation_command()


rule sweep_daid:
    input:
        expand(f"{RESULTS}/scores/sweep_daid/{{point}}/{SWEEP_SCORE_FILE}", point=DAID_SWEEP.instance_patterns),
    output:
        csv=f"{RESULTS}/tables/sweep_daid.csv",
        md=f"{RESULTS}/tables/sweep_daid.md",  # the scores as a grid (also .tex)
        tex=f"{RESULTS}/tables/sweep_daid.tex",
        png=report(f"{RESULTS}/figures/sweep_daid.png", caption="../report/sweep_daid.rst", category="Sweeps"),
    params:
        title=f"DAiD sweep, {SWEEP_METRIC_LABEL} ({config['profile']} profile, k={DAID['k']})",
        metric=SWEEPS["score"],
        records=sweep_records_flag,
    log:
        log_path("sweep_daid"),
    benchmark:
        jobstats_path("sweep_daid")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag sweep-table --summary {input} {params.records} --metric {params.metric} --x weight --y temperature --title {params.title:q} "
        "--out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
