# Input functions: what a job reads, by its wildcards (method, source split, run) and the config.


def source_data(wildcards):
    """The downloaded dataset a configured source reads, when it names one."""
    name = (TOKENISED.get(wildcards.split) or {}).get("download")
    return {"data": dataset_dir(name)} if name else {}


def clip_input(model, pretrained):
    """What a job using the CLIP `model` declares as input: the download folder of its OpenAI weights, or the file."""
    if pretrained != "openai":
        return pretrained
    if model not in CLIP_WEIGHTS and f"{model}-quickgelu" in CLIP_WEIGHTS:  # open_clip would only warn
        raise ValueError(
            f"{model} is built with standard GELU, but OpenAI's weights were trained with QuickGELU: use the model "
            f"name {model}-quickgelu (e.g. racm3.clip.model)"
        )
    if model not in CLIP_WEIGHTS:
        raise ValueError(
            f"no download of the OpenAI weights of {model}: add it to downloads.clip ({sorted(CLIP_WEIGHTS)}), or give "
            "a local weights file as pretrained"
        )
    return clip_download(model)


def racm3_clip_input(wildcards):
    """The CLIP weights of RA-CM3's retriever (configured corpora only)."""
    return {"clip": clip_input(RACM3["clip"]["model"], RACM3["clip"]["pretrained"])} if RETRIEVAL["corpora"] else {}


def image_index_inputs(wildcards):
    """RA-CM3's index is built from the corpus's code shards plus CLIP embedding shards, or captions (mini)."""
    if not RETRIEVAL["corpora"]:
        return {
            "codes": corpus_codes(),
            "captions": world_split(RETRIEVAL["source"], "metadata.jsonl"),
            "exclusions": EXCLUSIONS,
        }
    shards = source_shards({name: CORPORA[name] for name in RACM3_CORPORA})
    return {
        "codes": [code_shard(*shard) for shard in shards],
        "embeddings": [clip_shard(name, s, n) for name, s, n in shards],
        "exclusions": EXCLUSIONS,
    } | racm3_clip_input(wildcards)


def corpus_codes():
    """Every code shard of the retrieval corpus (all configured corpora)."""
    return [code_shard(*shard) for shard in source_shards(CORPORA)]


def finetune_codes():
    """Every code shard of the fine-tuning pairs (`finetune.pairs`)."""
    return [code_shard(*shard) for shard in source_shards(FINETUNE_PAIRS)]


def heldout_codes():
    return [code_shard(*shard) for shard in source_shards({HELDOUT_NAME: TOKENISED[HELDOUT_NAME]})]


def pairs_inputs(wildcards):
    """What the fine-tuning pairs are read from: code shards of `finetune.pairs`, else the mini world's split."""
    if FINETUNE_PAIRS:
        return {"pairs": finetune_codes(), "exclusions": EXCLUSIONS}
    return {"pairs": world_split(FAID["trainset_split"]), "exclusions": EXCLUSIONS}


def retrieval_accuracy_inputs(wildcards):
    """Figure 6's queries: FAiD's training set (`retrieval.accuracy.queries: train`) or held-out code shards."""
    if RETRIEVAL["accuracy"]["queries"] == "train":
        return {"trainset": FAID_TRAINSET}
    return {"codes": heldout_codes()}


def tokenise_inputs(wildcards):
    """The model, plus the mini world's split when the tokenised source is one."""
    inputs = {"model": BASE_MODEL} | source_data(wildcards)
    if (TOKENISED.get(wildcards.split) or {}).get("source") is None:
        inputs["images"] = world_split(wildcards.split)
    return inputs


def generation_shards(wildcards):
    """The shard markers of one method's prompt set (rule generate), gathered by rule finish_generation."""
    shards = [f"{s:05d}" for s in range(GENERATION_SHARDS)]
    return expand(
        rules.generate.output[0],
        method=wildcards.method,
        prompts=wildcards.prompts,
        shard=shards,
        num_shards=f"{GENERATION_SHARDS:05d}",
    )


def generation_inputs(wildcards):
    """The backbone (RA-CM3's fine-tuned one for racm3, Show-o's folder for its runs), plus what the method
    retrieves from."""
    if wildcards.method in SHOWO_RUNS:
        method = SHOWO_RUNS[wildcards.method]
        inputs = {"model": SHOWO_MODEL}
        inputs |= {"db": SHOWO_DATABASE} if method in ("daid", "faid") else {}
        return inputs | ({"faid": SHOWO_FAID_MODEL} if method == "faid" else {})
    if wildcards.method == "racm3":  # (the index reloads its CLIP from the weights it was built with)
        return {"model": RACM3_MODEL, "index": IMAGE_INDEX} | racm3_clip_input(
            wildcards
        )
    inputs = {"model": BASE_MODEL}
    if wildcards.method in ("daid", "faid"):
        inputs["db"] = DATABASE
    if wildcards.method == "faid":
        inputs["faid"] = FAID_MODEL
    return inputs


def bench_generate_inputs(wildcards):
    """What `arrag bench generate` needs for the configured methods (vanilla always)."""
    inputs = {"model": BASE_MODEL}
    if "daid" in METHODS or "faid" in METHODS:
        inputs["db"] = DATABASE
    if "faid" in METHODS:
        inputs["faid"] = FAID_MODEL
    if "racm3" in METHODS:
        inputs |= {"racm3": RACM3_MODEL, "index": IMAGE_INDEX}
        inputs |= racm3_clip_input(wildcards)
    return inputs


def bench_generate_showo_inputs(wildcards):
    """What `arrag bench generate` needs to time Show-o's configured methods (vanilla always): the inputs of each
    Show-o run, as its generation reads them."""
    if not SHOWO_RUNS:
        raise ValueError("bench_generate_showo times the Show-o backbone: add showo to backbones")
    inputs = {}
    for run in SHOWO_RUNS:
        inputs |= generation_inputs(SimpleNamespace(method=run))
    return inputs


def bench_results():
    """The `arrag bench generate` results Table 4 is made from: Janus's, then Show-o's when `backbones` has it."""
    return [rules.bench_generate.output.json] + ([rules.bench_generate_showo.output.json] if SHOWO_RUNS else [])


def geneval_scoring_inputs(wildcards):
    """The images, plus the Mask2Former checkpoint for the paper's detector."""
    inputs = {"images": generated(wildcards.run, "geneval")}
    if GENEVAL["detector"] == "mask2former":
        inputs["checkpoint"] = MASK2FORMER
        inputs["clip"] = clip_input(GENEVAL_CLIP, GENEVAL["clip_pretrained"])
    return inputs


def dpg_prompt_source(wildcards):
    """mini-DPG's folder (prompts/ + dpg_bench.csv), or nothing: the vendored DPG-Bench prompts."""
    return [MINI_DPG] if DPG["questions"] == "mini" else []


def dpg_question_source(wildcards):
    return MINI_DPG if DPG["questions"] == "mini" else DPG_CSV


def dpg_scoring_inputs(wildcards):
    """The tiles and questions, plus the downloaded mPLUG checkpoint (with its tokenizer) for the paper's VQA."""
    inputs = {"tiles": dpg_tiles(wildcards.method), "questions": dpg_question_source(wildcards)}
    return inputs | ({"mplug": MPLUG} if DPG["vqa"] == "mplug" else {})


def fidelity_inputs(wildcards):
    """Generated and real images, and the feature networks' weights."""
    if FIDELITY["benchmark"] == "mini":
        return {
            "images": generated(wildcards.method, FIDELITY_PROMPTS),
            "reference": world_split("reference"),
            "features": FEATURES_MODEL,
        }
    return {
        "images": generated(wildcards.method, FIDELITY_PROMPTS),
        "reference": mjhq_reference("mjhq"),
        "inception": INCEPTION,
        "clip": clip_input(CMMD_CLIP, FIDELITY["clip_pretrained"]),
    }


def hash_inputs(wildcards):
    """The model (its tokenizer's image size: the mini profile's VQ-VAE, so that hashing does not wait for the base
    model), and what the source reads: a download, MJHQ-30K's extracted reference images or a mini-world split."""
    entry = HASHED[wildcards.split]
    inputs = {"model": VQ_MODEL if MINI_MODEL else BASE_MODEL}
    if entry.get("download"):
        inputs["data"] = dataset_dir(entry["download"])
    if wildcards.split == "mjhq":
        inputs["images"] = mjhq_reference("mjhq")
    elif entry["source"] is None:
        inputs["images"] = world_split(wildcards.split)
    return inputs


def table_inputs(score_file, prompts, runs=TABLE_RUNS):
    """A table's inputs: each row's score file (the methods', then Show-o's runs), and the generation.json of the
    images it scored (the Params column: `arrag generate-benchmark` records the generating model's parameter count
    there)."""
    return {
        "results": expand(f"{RESULTS}/scores/{{method}}/{score_file}", method=runs),
        "generations": expand(generated("{method}", prompts), method=runs),
    }


def showo_corpus_codes():
    """Every code shard of the retrieval corpus, tokenised by Show-o's MAGVIT-v2."""
    return [showo_code_shard(*shard) for shard in source_shards(CORPORA)]


def showo_tokenise_inputs(wildcards):
    """As tokenise_inputs, with Show-o's backbone folder as the model."""
    return tokenise_inputs(wildcards) | {"model": SHOWO_MODEL}


def showo_pairs_inputs(wildcards):
    """Show-o's FAiD pairs: `finetune.pairs` tokenised by Show-o's MAGVIT-v2, else the mini world's split."""
    if FINETUNE_PAIRS:
        return {"pairs": [showo_code_shard(*s) for s in source_shards(FINETUNE_PAIRS)], "exclusions": EXCLUSIONS}
    return pairs_inputs(wildcards)


def results_doc_inputs(wildcards):
    """Everything `all` builds but the document itself, so it is assembled from finished tables and figures."""
    return [path for path in rules.all.input if path != RESULTS_DOC]
