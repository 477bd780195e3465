# DPG-Bench (paper Table 2): prompts -> 4 images per prompt -> 2x2 tiles named by prompt -> VQA scoring with the
# question CSV's dependency rule -> Table 2. The mini profile builds a DPG-style prompt set and question CSV from
# the mini world's reference captions (mini-DPG, answered by the shapes detector); the paper profile uses the
# 1065 vendored prompts, the question CSV from a pinned download, and mPLUG in its own conda env.


rule mini_dpg:
    input:
        world_split("reference", "metadata.jsonl"),
    output:
        directory(MINI_DPG),
    params:
        world=lambda wildcards, input: world_dir(input[0]),
        n=DPG["prompts"],
        seed=config["world"]["seed"],
    log:
        log_path("mini_dpg"),
    benchmark:
        jobstats_path("mini_dpg")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag mini-dpg --world {params.world} --n {params.n} --seed {params.seed} --out {output} > {log} 2>&1"


rule download_dpg_csv:
    output:
        DPG_CSV,
    params:
        url=DPG["csv_url"],
        sha256=flag("--sha256", DPG["csv_sha256"]) if DPG["csv_sha256"] else "",
        mirror=mirror_flag(),
    log:
        log_path("download_dpg_csv"),
    benchmark:
        jobstats_path("download_dpg_csv")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag download file --url {params.url:q} {params.sha256} {params.mirror} --out {output} > {log} 2>&1"


rule dpg_prompts:
    input:
        dpg_prompt_source,
    output:
        prompts_file("dpg"),
    params:
        folder=lambda wildcards, input: f"--prompts-dir {input[0]}/prompts" if input else "",
    log:
        log_path("dpg_prompts"),
    benchmark:
        jobstats_path("dpg_prompts")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag dpg-prompts {params.folder} --out {output} > {log} 2>&1"


rule tile_dpg:
    input:
        generated("{method}", "dpg"),
    output:
        directory(dpg_tiles("{method}")),
    params:
        images=lambda wildcards, input: os.path.dirname(input[0]),
    log:
        log_path("tile_dpg", "{method}"),
    benchmark:
        jobstats_path("tile_dpg", "{method}")
    threads: 1
    resources:
        mem_mb=job_mem_mb("light", image_size=IMAGE_SIZE, images=4),
    shell:
        "arrag dpg-tiles --images {params.images} --out {output} > {log} 2>&1"


rule download_mplug:
    # DPG-Bench's VQA model with its tokenizer (every file of the ModelScope repository), locked at the first
    # download: ModelScope names versions by tag or branch, so the lock's SHA-256 of each file pin the content.
    output:
        directory(MPLUG),
    params:
        model=DPG["mplug_model"],
        revision=DPG["mplug_revision"],
        lock=lock_path("mplug"),
        mirror=mirror_flag(),
    log:
        log_path("download_mplug"),
    benchmark:
        jobstats_path("download_mplug")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    retries: 3  # a dropped connection: the rerun resumes the file it was fetching
    shell:
        "arrag download modelscope --model-id {params.model:q} --revision {params.revision:q} --lock {params.lock:q} "
        "{params.mirror} --out {output} > {log} 2>&1"


rule score_dpg:
    input:
        unpack(dpg_scoring_inputs),
    output:
        jsonl=f"{RESULTS}/scores/{{method}}/dpg_results.jsonl",
        summary=f"{RESULTS}/scores/{{method}}/dpg_summary.json",
    params:
        csv=lambda wildcards, input: dpg_question_csv(input.questions),
        vqa=DPG["vqa"],
        quirks="" if DPG_SKIP_FIRST_ROW else "--keep-first-row",
        mplug=lambda wildcards, input: flag("--mplug-model", input.mplug) if DPG["vqa"] == "mplug" else "",
        arrag=arrag_on_gpu,
    log:
        log_path("score_dpg", "{method}"),
    benchmark:
        jobstats_path("score_dpg", "{method}")
    conda:
        None if DPG["vqa"] == "shapes" else "../envs/dpg.yaml"  # the benchmark's own environment
    threads: 1
    resources:
        mem_mb=scorer_mem_mb(DPG["vqa"], MPLUG_PARAMETERS),
        gpu=0 if DPG["vqa"] == "shapes" else 1,
    shell:
        "{params.arrag} dpg --tiles {input.tiles} --csv {params.csv} --vqa {params.vqa} {params.quirks} {params.mplug} "
        "--out-jsonl {output.jsonl} --out-json {output.summary} > {log} 2>&1"


rule dpg_table:
    input:
        **table_inputs("dpg_summary.json", "dpg"),
    output:
        **table_outputs("dpg", caption="../report/dpg.rst"),
    params:
        results=table_flags,
        records=table_records_flags,
        note=DPG_NOTE,
        paper=PAPER_ROWS,
        out=lambda wildcards, output: table_prefix(output),
    log:
        log_path("dpg_table"),
    benchmark:
        jobstats_path("dpg_table")
    threads: 1
    resources:
        mem_mb=LIGHT_MEM_MB,
    shell:
        "arrag table dpg {params.results} {params.records} {params.paper} --note {params.note:q} "
        "--out {params.out} > {log} 2>&1"
