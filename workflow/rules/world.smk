# The mini world: procedurally rendered images of coloured shapes, their splits and GenEval-schema prompts.


rule world:
    output:
        [world_split(split) for split in SPLITS],
        [world_split(split, "metadata.jsonl") for split in SPLITS],
        geneval=world_split("geneval", "evaluation_metadata.jsonl"),
        summary=f"{RESULTS}/world/world.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output.summary),
        splits=" ".join(f"--split {k}={v}" for k, v in config["world"]["splits"].items()),
        under=" ".join(f"--underrepresented {c}:{s}" for c, s in config["world"]["underrepresented"]),
        size=config["world"]["image_size"],
        seed=config["world"]["seed"],
        keep=config["world"]["keep_fraction"],
        prompts=config["world"]["geneval_prompts"],
        backgrounds=" ".join(f"--background {b}" for b in config["world"]["backgrounds"]),
        snap=config["world"]["snap"],
        tones=config["world"]["tones"],
        coloured=config["world"]["coloured_captions"],
    log:
        log_path("world"),
    benchmark:
        jobstats_path("world")
    threads: 1
    resources:
        mem_mb=job_mem_mb("light", image_size=config["world"]["image_size"], images=max(config["world"]["splits"].values(), default=0)),
    shell:
        "arrag world --out {params.out} --size {params.size} --seed {params.seed} {params.splits} "
        "{params.under} --keep-fraction {params.keep} --geneval-prompts {params.prompts} {params.backgrounds} --snap {params.snap} --tones {params.tones} "
        "--coloured-captions {params.coloured} > {log} 2>&1"
