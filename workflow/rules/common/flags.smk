# The `arrag` flags of the rules, one builder per decision: every rule that needs a setting's flags calls the
# same function, so that two rules cannot pass the same setting differently.

# Config strings reach a shell only as one quoted word: through flag() here, or `{params.x:q}` in a rule (names
# that become paths are restricted by the schema's patterns instead).
def flag(option, value):
    """`--option 'value'`: whatever the value holds (quotes, spaces, `;`, `$()`), the command gets one argument."""
    return f"{option} {quote(str(value))}"


def mirror_flag(subfolder=""):
    """--mirror for the download commands when `downloads.mirror` is set (clusters without internet)."""
    mirror = config["downloads"]["mirror"]
    return flag("--mirror", os.path.join(mirror, subfolder) if subfolder else mirror) if mirror else ""


def settings_flags(option, settings):
    """{'steps': 800} -> "--set steps=800" (option='--set'); the CLI converts each value to the field's type."""
    return " ".join(flag(option, f"{key}={value}") for key, value in sorted(settings.items()))


def sampling_flags(batch_size=None):
    """The sampling flags of every generating job (`arrag generate-benchmark`, `arrag bench generate`): the
    `generation` config, so that every table and figure samples alike; the timing of Table 4 sets its own batch."""
    g = config["generation"]
    flags = (
        f"--guidance-scale {g['guidance_scale']} --temperature {g['temperature']} "
        f"--seed {g['seed']} --batch-size {batch_size or g['batch_size']} {flag('--device', config['device'])}"
    )
    return flags + (f" --top-k {g['top_k']}" if g["top_k"] else "")


def daid_flags(weight=None, temperature=None):
    """DAiD's settings (the `daid` config) for every job that runs DAiD; a sweep point gives its own weight and
    temperature (the Paramspace wildcards, passed on as written)."""
    d = DAID
    weight = d["weight"] if weight is None else weight
    temperature = d["temperature"] if temperature is None else temperature
    flags = f"--daid-k {d['k']} --daid-weight {weight} --daid-temperature {temperature}"
    return flags + (" --daid-unique" if d["unique"] else "")


def prompt_set_flags(prompts, n=None, field=True):
    """`arrag generate-benchmark` / `finish-benchmark` flags selecting a prompt set's prompts and images (`n`
    images per prompt: the prompt set's own unless a sweep gives its own)."""
    p = PROMPT_SETS[prompts]
    flags = f"--n {n or p['n']}" + (f" --limit {p['limit']}" if "limit" in p else "")
    return flags + (f" --prompt-field {p['field']}" if field and "field" in p else "")


def method_flags(method, input, **daid):
    """`arrag generate-benchmark` flags selecting the decoding method and its settings; `daid`: a sweep point's
    weight and temperature (daid_flags). A Show-o run (SHOWO_RUNS) takes the flags of the method it runs."""
    method = SHOWO_RUNS.get(method, method)
    if method == "vanilla":
        return "--method vanilla"
    if method == "racm3":
        return f"--method racm3 {flag('--image-index', input.index)}"
    if method == "faid":
        return f"--method faid {flag('--db', input.db)} {flag('--faid', input.faid)} {db_devices_flag()}"
    return f"--method daid {flag('--db', input.db)} {daid_flags(**daid)} {db_devices_flag()}"


def generation_command(sharded=False):
    """The shell command of the generating rules (generate and the two sweeps' generate_*_sweep), whose params
    gpu, prompt_set, out, sampling and method come from the helpers above. `sharded`: the job makes one shard of
    the prompt set (wildcards shard and num_shards); finish_generation then writes generation.json."""
    command = (
        "OMP_NUM_THREADS={threads} {params.gpu} arrag generate-benchmark --model {input.model} --prompts {input.prompts} "
        "{params.prompt_set} --out {params.out} {params.sampling} {params.method}"
    )
    shard = "--shard $((10#{wildcards.shard})) --num-shards $((10#{wildcards.num_shards}))"
    return f"{command} {shard} > {{log}} 2>&1" if sharded else f"{command} > {{log}} 2>&1"


def bench_generate_flags(methods):
    """The rows `arrag bench generate` times beside vanilla's: a flag per method of `methods` (Janus's `methods`, or
    Show-o's `showo.methods`), DAiD's whenever --db is given."""

    def flags(wildcards, input):
        flags = [f"{flag('--db', input.db)} {db_devices_flag()}"] if "daid" in methods or "faid" in methods else []
        flags += [flag("--faid", input.faid)] if "faid" in methods else []
        if "racm3" in methods:
            flags.append(f"{flag('--racm3-model', input.racm3)} {flag('--image-index', input.index)}")
        return " ".join(flags)

    return flags


def bench_flags():
    """Table 4's timing settings (`generation.bench`) beside the sampling: its batch, its repeats, and --steps
    (decode only an autoregressive image's first steps and estimate the rest; Show-o times all its masked steps)."""
    bench = config["generation"]["bench"]
    flags = f"{sampling_flags(batch_size=bench['batch_size'])} --repeats {bench['repeats']}"
    return flags + (f" {flag('--steps', bench['steps'])}" if bench["steps"] else "")


def bench_generate_command():
    """The shell command of Table 4's timing rules (bench_generate: Janus; bench_generate_showo: Show-o), whose
    params gpu, methods (bench_generate_flags), daid (daid_flags) and bench (bench_flags) come from the helpers
    above."""
    return (
        "OMP_NUM_THREADS={threads} {params.gpu} arrag bench generate --model {input.model} {params.methods} "
        "--prompts {input.prompts} {params.daid} {params.bench} --out-json {output.json} --out-md {output.md} "
        "> {log} 2>&1"
    )


def clip_flags():
    clip = RACM3["clip"]
    flags = f"{flag('--clip-model', clip['model'])} {flag('--clip-pretrained', clip_file(clip['model'], clip['pretrained']))}"
    sha256 = clip_sha256(clip["model"], clip["pretrained"])
    return flags + (f" {flag('--clip-sha256', sha256)}" if sha256 else "")


def clip_file(model, pretrained):
    """The weights file a job loads (never an open_clip tag: a tag would download at job time)."""
    return f"{clip_input(model, pretrained)}/{CLIP_FILE}" if pretrained == "openai" else pretrained


def clip_sha256(model, pretrained):
    return CLIP_WEIGHTS[model]["sha256"] if pretrained == "openai" else RACM3["clip"]["sha256"]


def image_index_flags(wildcards, input):
    """The retriever's inputs, without the benchmark images the contamination check found."""
    if not RETRIEVAL["corpora"]:
        return f"{flag('--captions', input.captions)} {flag('--exclude', input.exclusions)}"
    return f"--embeddings {' '.join(map(quote, input.embeddings))} {clip_flags()} {flag('--exclude', input.exclusions)}"


def pairs_flags(wildcards, input):
    """`--codes SHARDS` or `--world DIR --split NAME`: the pairs of `arrag faid-trainset` and `train-racm3`,
    without the benchmark images the contamination check found (`--exclude`)."""
    if FINETUNE_PAIRS:
        return f"--codes {' '.join(map(quote, input.pairs))} {flag('--exclude', input.exclusions)}"
    world = f"{flag('--world', world_dir(input.pairs))} {flag('--split', FAID['trainset_split'])}"
    return f"{world} {flag('--exclude', input.exclusions)}"


def retrieval_accuracy_flags(wildcards, input):
    if RETRIEVAL["accuracy"]["queries"] == "train":
        return f"--queries train --trainset {input.trainset}"
    return f"--queries heldout --codes {input.codes}"


def tokenise_source(wildcards, input):
    """The JSON source spec `arrag tokenise` reads: a configured source, or a mini-world split (quote it: `:q`)."""
    configured = (TOKENISED.get(wildcards.split) or {}).get("source")
    return json.dumps(configured or {"type": "mini_world", "path": os.path.dirname(input.images)})


def hash_source(wildcards, input):
    """The JSON source spec of a hashed set: the same spec its tokenisation reads (tokenise_source)."""
    source = HASHED[wildcards.split]["source"]
    return json.dumps(source or {"type": "mini_world", "path": os.path.dirname(input.images)})


def attribution_corpus(wildcards, input):
    """Where `arrag attribution` finds the retrieved images: the database's source table for configured
    corpora, the mini world's split otherwise."""
    if RETRIEVAL["corpora"]:
        return flag("--db", input.db)
    source = {"type": "mini_world", "path": os.path.dirname(world_split(RETRIEVAL["source"]))}
    return flag("--source", json.dumps(source))


def contamination_flags(wildcards, input):
    """--reference NAME SHARDS... --source NAME SHARDS... of `arrag contamination`."""
    groups = [("--reference", REFERENCE_SETS), ("--source", CHECKED_SOURCES)]
    flags = [
        f"{option} {quote(name)} {' '.join(map(quote, hash_shards({name: sets[name]})))}"
        for option, sets in groups
        for name in sets
    ]
    return " ".join(flags)


def geneval_detector_flags(wildcards, input):
    """--detector and its weights, and the images per prompt the run was generated with (refusing others)."""
    n = f"--images-per-prompt {images_per_prompt(wildcards.run)}"
    if GENEVAL["detector"] == "shapes":
        return f"--detector shapes {n}"
    return (
        f"--detector mask2former {flag('--checkpoint', input.checkpoint)} "
        f"{flag('--clip-pretrained', clip_file(GENEVAL_CLIP, GENEVAL['clip_pretrained']))} --device cuda {n}"
    )


def dpg_question_csv(source):
    return f"{source}/dpg_bench.csv" if DPG["questions"] == "mini" else source


def fidelity_network_flags(input):
    if FIDELITY["benchmark"] == "mini":
        return f"{flag('--fid-network', f'mini:{input.features}')} {flag('--cmmd-network', f'mini:{input.features}')}"
    clip = clip_file(CMMD_CLIP, FIDELITY["clip_pretrained"])
    return f"{flag('--fid-network', f'inception:{input.inception}')} {flag('--cmmd-network', f'clip:{clip}')}"


def table_flags(wildcards, input):
    """`--result R --label RUN --params GENERATION` per row (table_inputs: results/<profile>/scores/<RUN>/...), for
    `arrag table`."""
    runs = [os.path.basename(os.path.dirname(r)) for r in input.results]
    return " ".join(f"--result {r} --label {m} --params {g}" for r, m, g in zip(input.results, runs, input.generations))


# The per-image records the scoring rules write beside each summary, in the same job (score_geneval, score_dpg):
# the tables' and sweeps' 95% intervals are bootstrapped from them (`arrag table --records`, `arrag sweep-table
# --records`). Fidelity records carry their own replicates (`arrag fidelity --bootstrap`) and have none.
RECORDS_BESIDE = {"geneval_summary.json": "geneval_results.jsonl", "dpg_summary.json": "dpg_results.jsonl"}


def records_of(summaries):
    """The per-image records beside each summary that has them, in order."""
    names = [(os.path.dirname(s), os.path.basename(s)) for s in summaries]
    return [os.path.join(folder, RECORDS_BESIDE[name]) for folder, name in names if name in RECORDS_BESIDE]


def table_records_flags(wildcards, input):
    """`--records JSONL` per row (in TABLE_RUNS order, as table_flags), for `arrag table`."""
    return " ".join(flag("--records", r) for r in records_of(input.results))


def sweep_records_flag(wildcards, input):
    """`--records JSONL ...` of a sweep's runs (in the order of its summaries), for `arrag sweep-table`."""
    records = records_of(input)
    return " ".join(["--records"] + [quote(r) for r in records]) if records else ""
