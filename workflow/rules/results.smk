# The run's results in one Markdown document (arrag.report): every table, figure and, where present, the scale
# table and benchmarks, stamped with the commit, the machine and the date. Assembled last, from what `all` built.

RESULTS_DOC = f"{RESULTS}/RESULTS.md"


def results_doc_inputs(wildcards):
    """Everything `rule all` builds but this document, so it is assembled from finished tables and figures only."""
    return [path for path in rules.all.input if path != RESULTS_DOC]


rule results_doc:
    input:
        results_doc_inputs,
    output:
        RESULTS_DOC,
    log:
        log_path("results_doc"),
    benchmark:
        benchmark_path("results_doc")
    params:
        results=RESULTS,
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "arrag results-doc --results {params.results} --out {output} > {log} 2>&1"
