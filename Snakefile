# AR-RAG pipeline. `snakemake --cores all` runs the mini profile (config/config.yaml);
# `snakemake --configfile config/<other>.yaml ...` runs another profile. See README.md.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/retrieval.smk"


rule all:
    input:
        f"{RESULTS}/images/vanilla/geneval/generation.json",
        f"{RESULTS}/images/vanilla/reference/generation.json",
        f"{RESULTS}/figures/samples_vanilla.png",
        f"{RESULTS}/tables/retrieval_accuracy.csv",
    default_target: True
