# DAiD's hyper-parameter sweep (paper Figure 7 left): the GenEval prompts generated at every
# (weight, temperature) of config["sweeps"]["daid"], each scored by rules/evaluate.smk, then one CSV and
# a heatmap. Points live under images/sweep_daid/weight~W/temperature~T/ (Snakemake's Paramspace).


rule generate_daid_sweep:
    input:
        model=f"{RESULTS}/models/base",
        db=f"{RESULTS}/retrieval/db",
        prompts=PROMPT_SETS["geneval"]["file"],
    output:
        f"{RESULTS}/images/sweep_daid/{DAID_SWEEP.wildcard_pattern}/geneval/generation.json",
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
    conda:
        "../envs/arrag.yaml"
    threads: gpu_job_threads
    resources:
        gpu=DB_GPUS,
        mem_mb=job_mem_mb("search", parameters=MODEL_PARAMETERS, batch_size=config["generation"]["batch_size"]),
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag generate-benchmark --model {input.model} --prompts {input.prompts} "
        "--n {params.n} --out {params.out} {params.sampling} --method daid --db {input.db} {params.db_devices} "
        "--daid-k {params.k} --daid-weight {wildcards.weight} --daid-temperature {wildcards.temperature} > {log} 2>&1"


rule sweep_daid:
    input:
        expand(f"{RESULTS}/scores/sweep_daid/{{point}}/geneval_summary.json", point=DAID_SWEEP.instance_patterns),
    output:
        csv=f"{RESULTS}/tables/sweep_daid.csv",
        md=f"{RESULTS}/tables/sweep_daid.md",  # the overall scores as a grid (also .tex)
        tex=f"{RESULTS}/tables/sweep_daid.tex",
        png=report(f"{RESULTS}/figures/sweep_daid.png", caption="../report/sweep_daid.rst", category="Sweeps"),
    params:
        title=f"DAiD sweep, GenEval overall ({config['profile']} profile, k={config['daid']['k']})",
    log:
        log_path("sweep_daid"),
    benchmark:
        benchmark_path("sweep_daid")
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "arrag sweep-table --summary {input} --x weight --y temperature --title '{params.title}' "
        "--out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
