# Scoring generated images: GenEval rules with the configured detector (the mini profile's analytic
# shapes detector), per-image records in the official evaluator's JSONL schema, and Table 1 per method.


rule score_geneval:
    input:
        f"{RESULTS}/images/{{run}}/geneval/generation.json",
    output:
        jsonl=f"{RESULTS}/scores/{{run}}/geneval_results.jsonl",
        summary=f"{RESULTS}/scores/{{run}}/geneval_summary.json",
    wildcard_constraints:
        run=r".+",  # a method (daid) or a sweep point (sweep_daid/weight~0.1/temperature~1.0)
    params:
        images=lambda wildcards, input: os.path.dirname(input[0]),
        detector=config["evaluation"]["geneval"]["detector"],
    log:
        f"{RESULTS}/logs/score_geneval/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_geneval/{{run}}.tsv"
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "arrag geneval --images {params.images} --detector {params.detector} --out-jsonl {output.jsonl} "
        "--out-json {output.summary} > {log} 2>&1"


rule geneval_table:
    input:
        expand("{results}/scores/{method}/geneval_summary.json", results=RESULTS, method=METHODS),
    output:
        **table_outputs("geneval", caption="../report/geneval.rst"),
    params:
        results=lambda wildcards, input: " ".join(f"--result {p}" for p in input),
        labels=" ".join(f"--label {m}" for m in METHODS),
        note=GENEVAL_NOTE,
        paper=PAPER_ROWS,
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("geneval_table"),
    benchmark:
        benchmark_path("geneval_table")
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=500,
    shell:
        "arrag table geneval {params.results} {params.labels} {params.paper} --note '{params.note}' "
        "--out {params.out} > {log} 2>&1"


rule score_fwd:
    input:
        images=f"{RESULTS}/images/{{method}}/reference/generation.json",
        reference=f"{RESULTS}/world/reference/images.npy",
    output:
        f"{RESULTS}/scores/{{method}}/fwd.json",
    params:
        images=lambda wildcards, input: os.path.dirname(input.images),
        level=config["evaluation"]["fwd"]["level"],
        size=config["evaluation"]["fwd"]["size"],
    log:
        f"{RESULTS}/logs/score_fwd/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_fwd/{{method}}.tsv"
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "arrag fwd --images {params.images} --reference {input.reference} --level {params.level} "
        "--size {params.size} --out-json {output} > {log} 2>&1"


rule fidelity_table:
    input:
        expand("{results}/scores/{method}/fwd.json", results=RESULTS, method=METHODS),
    output:
        **table_outputs("fidelity", caption="../report/fidelity.rst"),
    params:
        results=lambda wildcards, input: " ".join(f"--result {p}" for p in input),
        labels=" ".join(f"--label {m}" for m in METHODS),
        note=(
            f"FWD: Haar packets, level {config['evaluation']['fwd']['level']}, images at "
            f"{config['evaluation']['fwd']['size']} px; reference-caption images against the reference split."
        ),
        paper=PAPER_ROWS,
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("fidelity_table"),
    benchmark:
        benchmark_path("fidelity_table")
    conda:
        "../envs/arrag.yaml"
    threads: 1
    resources:
        mem_mb=500,
    shell:
        "arrag table fidelity {params.results} {params.labels} {params.paper} --note '{params.note}' "
        "--out {params.out} > {log} 2>&1"
