"""A rehearsal of the paper path on a machine without GPU or network: a local mirror of stand-in downloads.

`build_mirror(out)` writes, in exactly the layout each `arrag download ... --mirror` reads
(arrag.data.downloads, arrag.data.mjhq), stand-ins for what the paper profile downloads:

- `deepseek-community--Janus-Pro-1B/`: a hub-layout snapshot (config.json, safetensors, processor) of a
  random-weight `JanusForConditionalGeneration` with Janus-Pro-1B's configuration (384 px, 24 x 24 tokens,
  16384 x 8 codebook; the language model's and SigLIP's widths), `depth` layers in both towers;
- `pixparse--cc12m-wds/cc12m-train-NNNN.tar`: WebDataset tars (key.jpg + key.txt) of mini-world scenes
  rendered at 384 px with their captions;
- `brivangl--midjourney-v6-llava/data/train-NNNNN-of-NNNNN.parquet`: the same kind of images and captions in
  parquet (image {bytes, path}, caption column `llava`);
- `mjhq30k/{meta_data.json, mjhq30k_imgs.zip}`: MJHQ-30K's files (<category>/<id>.jpg in the zip);
- `timm--vit_base_patch32_clip_224.openai/open_clip_model.safetensors`: open_clip ViT-B/32 with random weights
  where `arrag download model --mirror` (rule download_clip) looks for OpenAI's, RA-CM3's retriever.

Nothing here is a real model or a real dataset: the rehearsal measures the code path and its costs, never
scores. Files whose downloads are pinned to a published SHA-256 (FID's Inception, GenEval's Mask2Former, the
CLIP weights' in downloads.clip) cannot have stand-ins: the rehearsal's profile unpins RA-CM3's CLIP (a lock
records the stand-in's SHA-256 instead) and scores with the mini world's own networks, so GenEval's CLIP and
Mask2Former, CMMD's CLIP, FID's Inception and DPG-Bench's mPLUG are not downloaded.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import torch
from PIL import Image

from arrag.io import atomic_path

HUB_ID = "deepseek-community/Janus-Pro-1B"
CC12M_REPO = "pixparse/cc12m-wds"
MIDJOURNEY_REPO = "brivangl/midjourney-v6-llava"
CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"  # OpenAI's ViT-B/32 as open_clip safetensors (downloads.clip)
CLIP_FILE = "open_clip_model.safetensors"
IMAGE_SIZE = 384  # Janus-Pro's generation resolution: 384 px / 16 px patches = 24 x 24 tokens

# Janus-Pro-1B's language model (DeepSeek-LLM 1.5B layout): the Janus-Pro report's Table 1 gives 24 layers,
# 16 heads, width 2048 and a 100K vocabulary; the exact vocabulary (102,400), MLP width (5,632) and positions
# (16,384) are those of deepseek-ai/Janus-Pro-1B's config.json (`language_config`) as quoted in public copies
# of it; the hub page could not be read here, so check them against it before relying on a cost figure.
JANUS_PRO_1B_TEXT = dict(
    vocab_size=102400,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=16384,
)
# SigLIP-L/16 at 384 px and the VQ-16 tokenizer (16384 codes of dimension 8) are transformers'
# JanusVisionConfig / JanusVQVAEConfig defaults, which document deepseek-community/Janus-Pro-1B.
# The toy sizes keep every shape the pipeline depends on (384 px, 24 x 24 grid, 16384 x 8 codebook) and cut the
# widths, so that the test suite's rehearsal takes seconds per rule.
TOY_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=2)


def janus_pro_1b_config(tokenizer, depth: int | None = None, toy: bool = False):
    """JanusConfig of Janus-Pro-1B (random weights follow from it), with `depth` layers in the language model
    and in SigLIP instead of 24 when given, and narrow widths when `toy`."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    from arrag.models.janus import IMAGE_TOKEN

    text = dict(JANUS_PRO_1B_TEXT, **(TOY_TEXT if toy else {}))
    if depth is not None:
        if depth < 1:
            raise ValueError(f"depth={depth}: give at least 1 layer (Janus-Pro-1B has 24)")
        text["num_hidden_layers"] = depth
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the vocabulary {text['vocab_size']}")
    specials = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    width = text["hidden_size"]
    vision = dict(num_hidden_layers=depth or 24)
    vq = dict(projection_dim=width, image_token_embed_dim=width)
    if toy:
        vision.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
        vq.update(base_channels=32, latent_channels=32, num_res_blocks=1)  # GroupNorm needs 32 channels
    return JanusConfig(
        text_config=LlamaConfig(**text, **specials),
        vision_config=JanusVisionConfig(**vision, projection_dim=width),
        vq_config=JanusVQVAEConfig(**vq),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )


def write_janus_snapshot(out_dir: Path, depth: int | None, toy: bool, seed: int = 0) -> dict:
    """A hub-layout snapshot of a random-weight Janus-Pro-1B stand-in (safetensors, processor) into out_dir."""
    from transformers import JanusForConditionalGeneration

    from arrag.data.mini_world import caption_vocabulary
    from arrag.models.janus import build_processor, build_word_tokenizer, configure_image_generation

    tokenizer = build_word_tokenizer(caption_vocabulary())  # stands in for Janus-Pro's 100K BPE vocabulary
    config = janus_pro_1b_config(tokenizer, depth, toy)
    torch.manual_seed(seed)
    # in bfloat16, as Janus-Pro's published checkpoints are: transformers loads a checkpoint in its own dtype, so
    # the rehearsal runs the dtype the paper profile runs on a GPU (and a CPU's bfloat16 kernels read half the bytes)
    model = JanusForConditionalGeneration(config).eval().to(torch.bfloat16)
    configure_image_generation(model, tokenizer)
    grid = config.vq_config.num_patches
    assert (grid, config.vq_config.num_embeddings, config.vq_config.embed_dim) == (24, 16384, 8), "not Janus-Pro's VQ"
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        build_processor(tokenizer, IMAGE_SIZE, grid * grid).save_pretrained(tmp)
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": config.text_config.num_hidden_layers}


def scene_images(name: str, n: int, seed: int, size: int = IMAGE_SIZE) -> list[tuple[bytes, str]]:
    """n mini-world scenes rendered at `size` px as JPEG bytes with their captions."""
    from arrag.data.mini_world import make_split

    images, records = make_split(name, n, seed, size)
    out = []
    for image, record in zip(images, records):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        out.append((buf.getvalue(), record["caption"]))
    return out


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(out_dir: Path, items: list[tuple[bytes, str]], per_tar: int, prefix: str) -> int:
    """items as WebDataset tars <prefix>-0000.tar, ... of `per_tar` samples each (key.jpg + key.txt)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tars = 0
    for start in range(0, len(items), per_tar):
        with atomic_path(out_dir / f"{prefix}-{n_tars:04d}.tar") as tmp, tarfile.open(tmp, "w") as tar:
            for i, (jpg, text) in enumerate(items[start : start + per_tar], start):
                _tar_add(tar, f"{i:09d}.jpg", jpg)
                _tar_add(tar, f"{i:09d}.txt", text.encode())
        n_tars += 1
    return n_tars


def write_parquet(out_dir: Path, items: list[tuple[bytes, str]], per_file: int) -> int:
    """items as Hugging Face-style parquet shards data/train-NNNNN-of-NNNNN.parquet (image {bytes, path}, llava)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_files = -(-len(items) // per_file)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        chunk = items[f * per_file : (f + 1) * per_file]
        table = pa.table({"image": [{"bytes": b, "path": None} for b, _ in chunk], "llava": [t for _, t in chunk]})
        with atomic_path(out_dir / "data" / f"train-{f:05d}-of-{n_files:05d}.parquet") as tmp:
            pq.write_table(table, tmp)
    return n_files


def write_mjhq(out_dir: Path, items: list[tuple[bytes, str]]) -> int:
    """MJHQ-30K's two files: meta_data.json {id: {category, prompt}} and the zip of <category>/<id>.jpg."""
    from arrag.data.mjhq import CATEGORIES, IMAGES, META

    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {}
    with atomic_path(out_dir / IMAGES) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for i, (jpg, text) in enumerate(items):
            item_id, category = f"{i:040x}", CATEGORIES[i % len(CATEGORIES)]  # ids are 40-hex like the real ones
            archive.writestr(f"{category}/{item_id}.jpg", jpg)
            meta[item_id] = {"category": category, "prompt": text}
    with atomic_path(out_dir / META) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return len(items)


def write_clip(path: Path, model_name: str = "ViT-B-32", seed: int = 0) -> None:
    """open_clip `model_name` with random weights as safetensors (what `racm3.clip.pretrained` may name)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))


def build_mirror(
    out: str | Path,
    *,
    cc12m: int = 64,
    cc12m_per_tar: int = 16,
    midjourney: int = 32,
    mjhq: int = 20,
    depth: int | None = 2,
    toy: bool = False,
    clip_model: str | None = "ViT-B-32",
    seed: int = 0,
) -> dict:
    """Every stand-in of the rehearsal's downloads into `out` (see the module docstring); returns what it wrote."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"janus": write_janus_snapshot(out / HUB_ID.replace("/", "--"), depth, toy, seed)}
    summary["cc12m_tars"] = write_webdataset(
        out / CC12M_REPO.replace("/", "--"), scene_images("cc12m", cc12m, seed), cc12m_per_tar, "cc12m-train"
    )
    summary["midjourney_parquet"] = write_parquet(
        out / MIDJOURNEY_REPO.replace("/", "--"), scene_images("midjourney", midjourney, seed + 1), per_file=16
    )
    summary["mjhq_images"] = write_mjhq(out / "mjhq30k", scene_images("mjhq", mjhq, seed + 2))
    if clip_model:  # RA-CM3's retriever (a test may bring a smaller CLIP of its own)
        summary["clip"] = f"{CLIP_REPO.replace('/', '--')}/{CLIP_FILE}"  # ViT-B-32 and its -quickgelu share weights
        (out / summary["clip"]).parent.mkdir(exist_ok=True)
        write_clip(out / summary["clip"], clip_model, seed=seed)
    (out / "MIRROR.json").write_text(json.dumps({**summary, "depth": depth, "toy": toy}, indent=2) + "\n")
    return summary
