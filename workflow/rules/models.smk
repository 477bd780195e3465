# The mini base model: a tiny transformers Janus whose VQ-VAE and generation path are trained here.
# (The paper profile downloads Janus-Pro-1B instead; every later stage loads either by path.)


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
        mem_mb=4000,
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
        mem_mb=6000,
    shell:
        "OMP_NUM_THREADS={threads} {params.gpu} arrag train-base --world {params.world} --split train --vq {input.vq} "
        "--out {output} {params.spec} {params.training} > {log} 2>&1"
