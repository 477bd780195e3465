# GPUs: how many a job asks for, which one it takes on a machine of several, and the multi-GPU launcher.

# A torch_compact database too large for one GPU is sharded over `retrieval.db_gpus` GPUs of each job that
# searches it (arrag --db-devices): such a job asks for that many GPUs.
DB_GPUS = RETRIEVAL["db_gpus"]
if DB_GPUS > 1 and RETRIEVAL["index"] != "torch_compact":
    raise ValueError(
        f"retrieval.db_gpus is {DB_GPUS}, but only a torch_compact database is sharded over GPUs "
        f"(retrieval.index is {RETRIEVAL['index']!r}): set index: torch_compact, or db_gpus: 1"
    )


def db_devices_flag():
    """--db-devices cuda:0,...: the job's GPUs (renumbered from 0 by CUDA_VISIBLE_DEVICES)."""
    return "--db-devices " + ",".join(f"cuda:{i}" for i in range(DB_GPUS)) if DB_GPUS > 1 else ""


def generation_gpus(wildcards):
    """GPUs of a generation job: the database's shards for the methods that search it (on either backbone)."""
    return DB_GPUS if SHOWO_RUNS.get(wildcards.method, wildcards.method) in ("daid", "faid") else 1


# GPU placement. Snakemake's `gpu` resource only counts: with `--resources gpu=N` on one machine each GPU job runs
# under `python -m arrag.gpu_slots`, which takes a free device (one lock file per GPU) and sets
# CUDA_VISIBLE_DEVICES; a value a scheduler set (SLURM) passes through unchanged.
_GPUS = workflow.global_resources.get("gpu")
GPU_SLOTS = int(_GPUS.value) if _GPUS is not None and _GPUS.value else 0
if GPU_SLOTS:
    os.environ.update(ARRAG_GPU_SLOTS=str(GPU_SLOTS))


def on_gpu(wildcards, resources):
    """Shell prefix running a job on its own GPU(s); a job with gpu=0 runs as is."""
    return f"python -m arrag.gpu_slots --count {resources.gpu} --"


# The mini model (mini and toy profiles) is so small that a second CPU thread gains a job little, while a second
# job beside it uses the core fully: without --resources gpu its jobs take one thread each (with all the cores
# each, the mini DAG ran one job at a time; docs/mini-profile.md).
MINI_MODEL = config["model"]["source"] == "train"


def cpu_job_threads(wildcards):
    """Threads of a job that can use every core (an index build, the mini feature network, a model job without GPU
    slots): one for the mini model, so that it runs beside a one-thread trainer rather than waiting for both cores
    to be free (with all the cores, the Show-o database and the feature network waited out the base model's
    training, a core idle); all of them otherwise."""
    return 1 if MINI_MODEL else workflow.cores


def gpu_job_threads(wildcards):
    """CPU threads of a GPU job: an equal share of the cores per GPU slot; without --resources gpu, as a CPU job."""
    if GPU_SLOTS:
        return max(1, workflow.cores // GPU_SLOTS)
    return cpu_job_threads(wildcards)


def trainer_threads(wildcards):
    """CPU threads of the mini VQ-VAE's training (the base model's: base_trainer_threads): every core without GPU
    slots. Every later job waits for it and little else is ready while it trains, so a second thread shortens the
    mini DAG (on 2 cores the VQ-VAE's 600 steps took about 160 s instead of 266, the base model's 800 steps of 64
    250 s instead of 450; docs/mini-profile.md), where one-thread jobs side by side could not."""
    return workflow.cores if MINI_MODEL and not GPU_SLOTS else gpu_job_threads(wildcards)


def base_trainer_threads(wildcards):
    """trainer_threads, shared by the base model's training seeds (model.base_selection.seeds), which train side
    by side on a CPU; with GPU slots each takes a slot's share."""
    if MINI_MODEL and not GPU_SLOTS:
        return max(1, workflow.cores // len(config["model"]["base_selection"]["seeds"]))
    return trainer_threads(wildcards)


def arrag_on_gpu(wildcards, resources):
    """`arrag` as the rules of the benchmarks' own conda envs run it (GenEval, DPG-Bench), on their GPU: their
    pinned torch predates ours, so the package is not installed there and runs from this checkout."""
    return (
        f"PYTHONPATH={quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}} "
        f"python -m arrag.gpu_slots --count {resources.gpu} -- python -m arrag"
    )


def launcher(processes):
    """`arrag` for one training process, or torchrun starting `processes` of them inside this one job (one per
    GPU; each takes its share of every global batch and the gradients are summed, arrag.models.training)."""
    if processes == 1:
        return "arrag"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {processes} -m arrag"
