# The run's results in one Markdown document (arrag.report): every table, figure and, where present, the scale
# table and benchmarks, stamped with the commit, the machine and the date. Assembled last, from what `all` built.


rule results_doc:
    input:
        results_doc_inputs,
    output:
        RESULTS_DOC,
    params:
        results=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        log_path("results_doc"),
    benchmark:
        jobstats_path("results_doc")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag results-doc --results {params.results} --out {output} > {log} 2>&1"
