# AR-RAG pipeline. `snakemake --cores all` runs the mini profile (config/config.yaml);
# `snakemake --configfile config/<other>.yaml ...` runs another profile. See README.md.

# The mini profile is the default only: with --configfile, the given files alone (over the schema's defaults)
# make the config, so that no mini setting leaks into another profile (Snakemake would merge them under it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


# Downloads run where Snakemake runs (a cluster's login node, which has internet), never as cluster jobs.
localrules: download_geneval_detector, download_dpg_csv, download_inception, download_mjhq, download_dataset,
    download_clip, download_mplug

include: "workflow/rules/world.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/racm3.smk"
include: "workflow/rules/faid.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/dpg.smk"
include: "workflow/rules/fidelity.smk"
include: "workflow/rules/contamination.smk"
include: "workflow/rules/results.smk"


rule all:
    input:
        expand("{results}/images/{method}/{prompts}/generation.json", results=RESULTS, method=METHODS,
               prompts=["geneval", "reference" if FIDELITY["benchmark"] == "mini" else "mjhq"]),
        expand("{results}/figures/samples_{method}.png", results=RESULTS, method=METHODS),
        f"{RESULTS}/tables/retrieval_accuracy.csv",
        f"{RESULTS}/tables/contamination.csv",
        f"{RESULTS}/tables/geneval.csv",
        f"{RESULTS}/tables/fidelity.csv",
        [f"{RESULTS}/tables/sweep_daid.csv"] if "daid" in METHODS else [],
        [f"{RESULTS}/tables/sweep_faid.csv"] if "faid" in METHODS else [],
        [f"{RESULTS}/tables/over_copying.csv", f"{RESULTS}/figures/attribution.png"] if RETRIEVAL_METHODS else [],
        f"{RESULTS}/tables/inference_time.csv",
        f"{RESULTS}/tables/dpg.csv",
        RESULTS_DOC,
    default_target: True
