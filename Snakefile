# AR-RAG pipeline. `snakemake --cores all` runs the mini profile (config/config.yaml);
# `snakemake --configfile config/<other>.yaml ...` runs another profile. See README.md.

# The mini profile is the default only: with --configfile, the given files alone (over the schema's defaults)
# make the config, so that no mini setting leaks into another profile (Snakemake would merge them under it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"  # helpers: paths, settings, GPUs, flags, inputs, memory (workflow/rules/common/)


# Downloads run where Snakemake runs (a cluster's login node, which has internet), never as cluster jobs.
localrules: download_geneval_detector, download_dpg_csv, download_inception, download_mjhq, download_dataset,
    download_clip, download_mplug

include: "workflow/rules/world.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/racm3.smk"
include: "workflow/rules/faid.smk"
include: "workflow/rules/showo.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/dpg.smk"
include: "workflow/rules/fidelity.smk"
include: "workflow/rules/contamination.smk"
include: "workflow/rules/results.smk"


rule all:
    input:
        expand(rules.finish_generation.output[0], method=METHODS, prompts=["geneval", FIDELITY_PROMPTS]),
        expand(rules.sample_grid.output[0], method=METHODS),
        rules.retrieval_accuracy.output.csv,
        rules.contamination.output.csv,
        rules.geneval_table.output.csv,
        rules.fidelity_table.output.csv,
        [rules.sweep_daid.output.csv] if "daid" in METHODS else [],
        [rules.sweep_faid.output.csv] if "faid" in METHODS else [],
        [rules.over_copying.output.csv, rules.attribution.output[0]] if RETRIEVAL_METHODS else [],
        rules.inference_time_table.output.csv,
        rules.dpg_table.output.csv,
        RESULTS_DOC,
    default_target: True
