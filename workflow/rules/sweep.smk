# DAiD's hyper-parameter sweep (paper Figure 7 left): the sweeps' prompt set (SWEEP_PROMPTS: the first 10K MJHQ-30K
# prompts in the paper profiles, the GenEval prompts in the mini one) generated at every (weight, temperature) of
# config["sweeps"]["daid"], each scored as `sweeps.score` says (rule score_sweep_fid, or score_geneval), then one CSV
# and a heatmap. Points live under images/sweep_daid/weight~W/temperature~T/ (Snakemake's Paramspace).


rule generate_daid_sweep:
    input:
        model=f"{RESULTS}/models/base",
        db=f"{RESULTS}/retrieval/db",
        prompts=PROMPT_SETS[SWEEP_PROMPTS]["file"],
    output:
        f"{RESULTS}/images/sweep_daid/{DAID_SWEEP.wildcard_pattern}/{SWEEP_PROMPTS}/generation.json",
    params:
        gpu=on_gpu,
        out=lambda wildcards, output: os.path.dirname(output[0]),
        n=config["sweeps"]["daid"]["images_per_prompt"],
        k=config["daid"]["k"],
        sampling=sampling_flags(),
        db_devices=db_devices_flag(),
    log:
        f"{RESULTS}/logs/generate_daid_sweep/{DAID_SWEEP.wildcard_pattern}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generate_daid_sweep/{DAID_SWEEP.wildcard_pattern}.tsv"
    threads: gpu_job_threads
    resources:
        gpu=DB_GPUS,
        mem_mb=SEARCH_MEM_MB,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag generate-benchmark --model {input.model} --prompts {input.prompts} "
        "--n {params.n} --out {params.out} {params.sampling} --method daid --db {input.db} {params.db_devices} "
        "--daid-k {params.k} --daid-weight {wildcards.weight} --daid-temperature {wildcards.temperature} > {log} 2>&1"


rule sweep_daid:
    input:
        expand(f"{RESULTS}/scores/sweep_daid/{{point}}/{SWEEP_SCORE_FILE}", point=DAID_SWEEP.instance_patterns),
    output:
        csv=f"{RESULTS}/tables/sweep_daid.csv",
        md=f"{RESULTS}/tables/sweep_daid.md",  # the scores as a grid (also .tex)
        tex=f"{RESULTS}/tables/sweep_daid.tex",
        png=report(f"{RESULTS}/figures/sweep_daid.png", caption="../report/sweep_daid.rst", category="Sweeps"),
    params:
        title=f"DAiD sweep, {SWEEP_METRIC_LABEL} ({config['profile']} profile, k={config['daid']['k']})",
        metric=SWEEPS["score"],
    log:
        log_path("sweep_daid"),
    benchmark:
        benchmark_path("sweep_daid")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag sweep-table --summary {input} --metric {params.metric} --x weight --y temperature --title {params.title:q} "
        "--out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
