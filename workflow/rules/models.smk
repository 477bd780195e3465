# The base model: the mini Janus, whose VQ-VAE and generation path are trained here (model.source: train), or a
# pinned hub snapshot such as Janus-Pro-1B (model.source: hub); every later stage loads either by path.

if config["model"]["source"] == "hub":

    localrules:
        download_model,

    rule download_model:
        # safetensors and configs only, at the pinned commit (arrag.data.downloads.download_model)
        output:
            directory(BASE_MODEL),
        params:
            hub_id=config["model"]["hub_id"],
            revision=config["model"]["revision"],
            lock=lock_path("model"),
            mirror=mirror_flag(),
        log:
            log_path("download_model"),
        benchmark:
            jobstats_path("download_model")
        threads: 1
        resources:
            mem_mb=LIGHT_MEM_MB,
        shell:
            "arrag download model --hub-id {params.hub_id:q} --revision {params.revision:q} --lock {params.lock:q} "
            "{params.mirror} --out {output} > {log} 2>&1"

else:

    rule train_vq:
        input:
            images=world_split("train"),
        output:
            directory(VQ_MODEL),
        params:
            gpu=on_gpu,
            world=lambda wildcards, input: world_dir(input.images),
            spec=settings_flags("--spec", config["model"]["spec"]),
            training=settings_flags("--set", config["model"]["vq_training"]),
        log:
            log_path("train_vq"),
        benchmark:
            jobstats_path("train_vq")
        priority: 10  # the mini DAG's critical path: ahead of jobs that are ready beside it (tokenisation, scoring)
        threads: trainer_threads
        resources:
            gpu=1,
            mem_mb=TRAIN_MEM_MB,
        shell:
            "OMP_NUM_THREADS={threads} {params.gpu} arrag train-vq --world {params.world} --split train --out {output} "
            "{params.spec} {params.training} > {log} 2>&1"


    rule train_base:
        input:
            vq=VQ_MODEL,
            images=world_split("train"),
        output:
            directory(BASE_CANDIDATE),
        params:
            gpu=on_gpu,
            world=lambda wildcards, input: world_dir(input.images),
            spec=settings_flags("--spec", config["model"]["spec"]),
            training=settings_flags("--set", config["model"]["base_training"]),
        log:
            log_path("train_base", "seed~{seed}"),
        benchmark:
            jobstats_path("train_base", "seed~{seed}")
        priority: 10  # the mini DAG's critical path: ahead of jobs that are ready beside it (tokenisation, scoring)
        threads: base_trainer_threads
        resources:
            gpu=1,
            mem_mb=TRAIN_MEM_MB,
        shell:
            "OMP_NUM_THREADS={threads} {params.gpu} arrag train-base --world {params.world} --split train --vq {input.vq} "
            "--out {output} {params.spec} {params.training} --set seed={wildcards.seed} > {log} 2>&1"


    rule select_base:
        # the seed whose model reads its captions' shape and colour words most on a held-out split
        # (docs/mini-profile.md, "Reading the caption"); one seed: its model, with its caption reliance on record
        input:
            candidates=expand(BASE_CANDIDATE, seed=config["model"]["base_selection"]["seeds"]),
            images=world_split(config["model"]["base_selection"]["split"]),
        output:
            model=directory(BASE_MODEL),
            record=BASE_SELECTION,
        params:
            candidates=lambda wildcards, input: " ".join(f"--candidate {c}" for c in input.candidates),
            split=lambda wildcards, input: os.path.dirname(input.images),
        log:
            log_path("select_base"),
        benchmark:
            jobstats_path("select_base")
        priority: 10
        threads: 1
        resources:
            mem_mb=TRAIN_MEM_MB,  # two models in turn, and their forward passes
        shell:
            "OMP_NUM_THREADS={threads} arrag select-base {params.candidates} --split {params.split} "
            "--out {output.model} --record {output.record} > {log} 2>&1"


rule download_clip:
    # The OpenAI weights of an open_clip model as safetensors (downloads.clip), for RA-CM3's retriever, GenEval's
    # colours and CMMD: a pinned commit (and SHA-256), or a branch locked at the first download.
    output:
        directory(clip_download("{model}")),
    wildcard_constraints:
        model="|".join(re.escape(m) for m in CLIP_WEIGHTS) or "(?!)",
    params:
        repo=lambda wildcards: CLIP_WEIGHTS[wildcards.model]["repo"],
        revision=lambda wildcards: CLIP_WEIGHTS[wildcards.model]["revision"],
        sha256=lambda wildcards: (
            flag("--sha256", f"{CLIP_FILE}={CLIP_WEIGHTS[wildcards.model]['sha256']}")
            if CLIP_WEIGHTS[wildcards.model]["sha256"]
            else ""
        ),
        lock=lambda wildcards: lock_path(f"clip-{wildcards.model}"),
        file=CLIP_FILE,
        mirror=mirror_flag(),
    log:
        log_path("download_clip", "{model}"),
    benchmark:
        jobstats_path("download_clip", "{model}")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    retries: 3  # a dropped connection: the rerun resumes in <out>.partial/
    shell:
        "arrag download model --hub-id {params.repo:q} --revision {params.revision:q} --include {params.file} "
        "{params.sha256} --lock {params.lock:q} {params.mirror} --out {output} > {log} 2>&1"
