# The base model: the mini Janus, whose VQ-VAE and generation path are trained here (model.source: train), or a
# pinned hub snapshot such as Janus-Pro-1B (model.source: hub); every later stage loads either by path.

if config["model"]["source"] == "hub":

    localrules:
        download_model,

    rule download_model:
        # safetensors and configs only, at the pinned commit (arrag.data.downloads.download_model)
        output:
            directory(f"{RESULTS}/models/base"),
        params:
            hub_id=config["model"]["hub_id"],
            revision=config["model"]["revision"],
            mirror=mirror_flag(),
        log:
            log_path("download_model"),
        benchmark:
            benchmark_path("download_model")
        conda:
            "../envs/arrag.yaml"
        threads: 1
        resources:
            mem_mb=2000,
        shell:
            "arrag download model --hub-id {params.hub_id} --revision {params.revision} {params.mirror} "
            "--out {output} > {log} 2>&1"

else:

    rule train_vq:
        input:
            images=f"{RESULTS}/world/train/images.npy",
        output:
            directory(f"{RESULTS}/models/vq"),
        params:
            gpu=on_gpu,
            world=lambda wildcards, input: world_dir(input.images),
            spec=settings_flags("--spec", config["model"]["spec"]),
            training=settings_flags("--set", config["model"]["vq_training"]),
        log:
            log_path("train_vq"),
        benchmark:
            benchmark_path("train_vq")
        conda:
            "../envs/arrag.yaml"
        threads: gpu_job_threads
        resources:
            gpu=1,
            mem_mb=job_mem_mb("train", parameters=MODEL_PARAMETERS),
        shell:
            "OMP_NUM_THREADS={threads} {params.gpu} arrag train-vq --world {params.world} --split train --out {output} "
            "{params.spec} {params.training} > {log} 2>&1"


    rule train_base:
        input:
            vq=f"{RESULTS}/models/vq",
            images=f"{RESULTS}/world/train/images.npy",
        output:
            directory(f"{RESULTS}/models/base"),
        params:
            gpu=on_gpu,
            world=lambda wildcards, input: world_dir(input.images),
            spec=settings_flags("--spec", config["model"]["spec"]),
            training=settings_flags("--set", config["model"]["base_training"]),
        log:
            log_path("train_base"),
        benchmark:
            benchmark_path("train_base")
        conda:
            "../envs/arrag.yaml"
        threads: gpu_job_threads
        resources:
            gpu=1,
            mem_mb=job_mem_mb("train", parameters=MODEL_PARAMETERS),
        shell:
            "OMP_NUM_THREADS={threads} {params.gpu} arrag train-base --world {params.world} --split train --vq {input.vq} "
            "--out {output} {params.spec} {params.training} > {log} 2>&1"
