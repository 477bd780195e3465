# Fidelity against real images (paper Table 3: CMMD, FID, FWD). The paper profile generates one image per
# MJHQ-30K prompt and compares it with MJHQ-30K's real images (Inception for FID, CLIP ViT-L/14@336 for CMMD);
# the mini profile compares images of the reference split's captions with the reference split itself, FID and
# CMMD on a feature network trained on the mini world (mini-FID, mini-CMMD).


rule train_features:
    input:
        world_split("train"),
    output:
        directory(FEATURES_MODEL),
    params:
        world=lambda wildcards, input: world_dir(input[0]),
        settings=settings_flags("--set", FIDELITY["mini_network"]),
    log:
        log_path("train_features"),
    benchmark:
        jobstats_path("train_features")
    threads: cpu_job_threads
    resources:
        mem_mb=job_mem_mb("features", images=config["world"]["splits"].get("train", 0), image_size=config["world"]["image_size"]),
    shell:
        "OMP_NUM_THREADS={threads} arrag train-features --world {params.world} --split train {params.settings} "
        "--out {output} > {log} 2>&1"


rule download_inception:
    output:
        INCEPTION,
    params:
        mirror=mirror_flag(),
    log:
        log_path("download_inception"),
    benchmark:
        jobstats_path("download_inception")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag download inception {params.mirror} --out {output} > {log} 2>&1"


rule download_mjhq:
    output:
        directory(MJHQ30K),
    params:
        revision=flag("--revision", FIDELITY["mjhq_revision"]) if FIDELITY["mjhq_revision"] else "",
        mirror=mirror_flag("mjhq30k"),
    log:
        log_path("download_mjhq"),
    benchmark:
        jobstats_path("download_mjhq")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag download mjhq {params.revision} {params.mirror} --out {output} > {log} 2>&1"


rule mjhq_prompts:
    # Table 3's prompt set (mjhq: `evaluation.fidelity.mjhq_prompts`) and the sweeps' (mjhq_sweep: the first
    # `sweeps.mjhq_prompts`), each with the real images of its prompts
    input:
        MJHQ30K,
    output:
        prompts=prompts_file("{mjhq}"),
        reference=directory(mjhq_reference("{mjhq}")),
    wildcard_constraints:
        mjhq="mjhq|mjhq_sweep",
    params:
        limit=lambda wildcards: f"--limit {MJHQ_LIMITS[wildcards.mjhq]}" if MJHQ_LIMITS[wildcards.mjhq] else "",
    log:
        log_path("mjhq_prompts", "{mjhq}"),
    benchmark:
        jobstats_path("mjhq_prompts", "{mjhq}")
    threads: 1
    resources:
        mem_mb=job_mem_mb("light", records=MJHQ_IMAGES),
    shell:
        "arrag mjhq-prompts --dataset {input} {params.limit} --out-prompts {output.prompts} "
        "--out-reference {output.reference} > {log} 2>&1"


rule score_fidelity:
    input:
        unpack(fidelity_inputs),
    output:
        f"{RESULTS}/scores/{{method}}/fidelity.json",
    params:
        gpu=on_gpu,
        images=lambda wildcards, input: os.path.dirname(input.images),
        networks=lambda wildcards, input: fidelity_network_flags(input),
        level=config["evaluation"]["fwd"]["level"],
        size=config["evaluation"]["fwd"]["size"],
        device=config["device"],
    log:
        log_path("score_fidelity", "{method}"),
    benchmark:
        jobstats_path("score_fidelity", "{method}")
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=fidelity_mem_mb(FIDELITY_IMAGES, _PAPER_FIDELITY),
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag fidelity --images {params.images} --reference {input.reference} "
        "{params.networks} --fwd-level {params.level} --fwd-size {params.size} --device {params.device} "
        "--out-json {output} > {log} 2>&1"


rule score_sweep_fid:
    # a sweep point (Figure 7) as the paper scores it: FID (Inception) against the real images of its MJHQ-30K prompts
    input:
        images=generated("{run}", SWEEP_PROMPTS),
        reference=mjhq_reference(SWEEP_PROMPTS),
        inception=INCEPTION,
    output:
        f"{RESULTS}/scores/{{run}}/sweep_fid.json",
    wildcard_constraints:
        run=r"sweep_(daid|faid)/.+",
    params:
        gpu=on_gpu,
        images=lambda wildcards, input: os.path.dirname(input.images),
        level=config["evaluation"]["fwd"]["level"],
        size=config["evaluation"]["fwd"]["size"],
        device=config["device"],
    log:
        log_path("score_sweep_fid", "{run}"),
    benchmark:
        jobstats_path("score_sweep_fid", "{run}")
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=fidelity_mem_mb(SWEEPS["mjhq_prompts"] or MJHQ_IMAGES, paper_networks=True),
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag fidelity --images {params.images} --reference {input.reference} "
        "--fid-network inception:{input.inception} --fwd-level {params.level} --fwd-size {params.size} "
        "--device {params.device} --out-json {output} > {log} 2>&1"


rule fidelity_table:
    input:
        **table_inputs("fidelity.json", FIDELITY_PROMPTS),
    output:
        **table_outputs("fidelity", caption="../report/fidelity.rst"),
    params:
        results=table_flags,
        note=FIDELITY_NOTE,
        paper=PAPER_ROWS,
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("fidelity_table"),
    benchmark:
        jobstats_path("fidelity_table")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag table fidelity {params.results} {params.paper} --note {params.note:q} "
        "--out {params.out} > {log} 2>&1"
