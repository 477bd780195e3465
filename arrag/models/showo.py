"""Show-o's language model: transformers' PhiForCausalLM (qk_layernorm on), its vocabulary layout, the
text-to-image prompt, the omni-attention mask and a loader for a local folder.

Show-o (showlab/show-o) is a Phi-1.5 causal LM whose vocabulary is extended with special tokens, 8,192 image codes
and a mask token; it fills masked image tokens in parallel (MaskGIT-style). Its own code fetches
microsoft/phi-1_5's config and tokenizer from the hub when it is built; this module never fetches anything: the
LM's shape is Phi-1.5's, written down below, or the `phi_config` an arrag model folder records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PhiConfig, PhiForCausalLM
from transformers.initialization import no_init_weights

from arrag.io import atomic_path, write_json
from arrag.manifest import verify, write_manifest
from arrag.models.janus import ModelLoadError, check_loaded_keys

# microsoft/phi-1_5's config.json (the shape Show-o's LM has); Show-o turns qk_layernorm on in its PhiForCausalLM.
PHI_1_5 = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=32,
    hidden_act="gelu_new",
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    partial_rotary_factor=0.5,
    rope_theta=10000.0,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attention_dropout=0.0,
    tie_word_embeddings=False,
)
PHI_1_5_TEXT_VOCAB = 50295  # len(phi-1_5's tokenizer): 50,257 GPT-2 tokens + 38 added whitespace tokens
PHI_1_5_ENDOFTEXT = 50256  # <|endoftext|>, Phi-1.5's bos and eos alike

# Added after [PAD], in this order (Show-o's UniversalPrompting); their ids follow from the order.
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")
MAX_TEXT_LEN = 128  # Show-o's max_seq_length: the text block is max_text_len + 1 tokens
WEIGHTS_NAME = "pytorch_model.safetensors"  # the published file's name (Show-o's ModelMixin)
PREFIX = "showo."  # Show-o keeps its PhiForCausalLM as the attribute `showo`


@dataclass(frozen=True)
class ShowoVocab:
    """Token ids: the text tokens [0, text_vocab_size), then [PAD], the special tokens, the image codes and the
    mask token last. For showlab/show-o: [PAD] 50295, <|soi|> 50296 ... <|lvg|> 50304, codes 50305..58496, mask
    58497, 58,498 in all. Like Show-o's UniversalPrompting it also fixes the text block's length, max_text_len + 1
    ids (128 for showlab/show-o; the mini Show-o's captions need far fewer, and every step reads the block)."""

    text_vocab_size: int = PHI_1_5_TEXT_VOCAB
    codebook_size: int = 8192
    bos_id: int = PHI_1_5_ENDOFTEXT
    eos_id: int = PHI_1_5_ENDOFTEXT
    max_text_len: int = MAX_TEXT_LEN

    def __post_init__(self):
        if isinstance(self.max_text_len, bool) or not isinstance(self.max_text_len, int) or self.max_text_len < 3:
            raise ValueError(
                f"ShowoVocab.max_text_len must be an integer >= 3 (<|t2i|>, <bos> and <eos> take 3), "
                f"got {self.max_text_len!r}"
            )
        for name in ("text_vocab_size", "codebook_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ShowoVocab.{name} must be a positive integer, got {value!r}")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.text_vocab_size:
                raise ValueError(
                    f"ShowoVocab.{name} must be a text token id in [0, {self.text_vocab_size}), got {value!r}"
                )

    @property
    def pad_id(self) -> int:
        return self.text_vocab_size

    def special(self, token: str) -> int:
        if token not in SPECIAL_TOKENS:
            raise ValueError(f"{token!r} is not one of Show-o's special tokens {SPECIAL_TOKENS}")
        return self.pad_id + 1 + SPECIAL_TOKENS.index(token)

    @property
    def image_offset(self) -> int:
        return self.pad_id + 1 + len(SPECIAL_TOKENS)

    @property
    def mask_id(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.mask_id + 1

    def check(self, vocab_size: int, mask_token_id: int | None = None, where: str = "the model") -> None:
        """Refuse a model whose vocabulary is not this layout (another tokenizer or codebook)."""
        if vocab_size != self.vocab_size or mask_token_id not in (None, self.mask_id):
            raise ModelLoadError(
                f"{where} has vocab_size {vocab_size} (mask token {mask_token_id}), but {self.text_vocab_size} text "
                f"tokens, [PAD], {len(SPECIAL_TOKENS)} special tokens, {self.codebook_size} image codes and the mask "
                f"token make {self.vocab_size} (mask token {self.mask_id}); the text vocabulary or codebook differs"
            )


def vocab_for_tokenizer(tokenizer, codebook_size: int = 8192, max_text_len: int = MAX_TEXT_LEN) -> ShowoVocab:
    """The layout over a text tokenizer as published (Phi-1.5's: 50,295 tokens, <|endoftext|> as bos and eos),
    before Show-o adds [PAD] and its special tokens to it."""
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the text tokenizer has no bos or eos token; Show-o's prompt needs both")
    return ShowoVocab(len(tokenizer), codebook_size, tokenizer.bos_token_id, tokenizer.eos_token_id, max_text_len)


def encode_texts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Text token ids per prompt, without special tokens (text_block adds <bos> and <eos> itself)."""
    return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class ShowoSpec:
    """What a Show-o folder's config.json says: the vocabulary, the image grid and the LM's config."""

    vocab: ShowoVocab
    num_image_tokens: int  # Show-o's num_vq_tokens: 256 at 256 px (16x16), 1024 at 512 px
    phi: PhiConfig


def phi_config(vocab: ShowoVocab, **shape) -> PhiConfig:
    """The LM's config: Phi-1.5's shape unless `shape` overrides it, qk_layernorm on, Show-o's vocabulary."""
    fields = {**PHI_1_5, **shape}
    rope = {
        "rope_type": "default",
        "rope_theta": fields.pop("rope_theta"),
        "partial_rotary_factor": fields.pop("partial_rotary_factor"),
    }
    return PhiConfig(
        vocab_size=vocab.vocab_size,
        qk_layernorm=True,
        use_cache=False,  # masked decoding re-reads the whole sequence at every step
        rope_parameters=rope,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id,
        **fields,  # no pad_token_id: Show-o's embedding has no padding_idx ([PAD]'s row is trained like any other)
    )


def build_showo(spec: ShowoSpec, dtype: torch.dtype | None = None) -> PhiForCausalLM:
    """The LM with random weights; under `with torch.device("meta")` it has shapes only (no memory)."""
    spec.vocab.check(spec.phi.vocab_size, where="the Phi config")
    return PhiForCausalLM._from_config(spec.phi, dtype=dtype)


# ---- the text-to-image sequence


def text_block(text_ids: list[int], vocab: ShowoVocab) -> list[int]:
    """`[PAD]... <|t2i|> <bos> text <eos>`, left-padded to vocab.max_text_len + 1 ids; a longer text is cut and
    keeps its <eos>. Empty text gives the unconditional block `[PAD]... <|t2i|> <bos> <eos>`."""
    if text_ids and text_ids[0] == vocab.bos_id:
        text_ids = text_ids[1:]
    bad = [t for t in text_ids if not 0 <= int(t) < vocab.text_vocab_size]
    if bad:
        raise ValueError(f"text ids {bad[:5]} are not text tokens (ids below {vocab.text_vocab_size})")
    ids = [vocab.special("<|t2i|>"), vocab.bos_id, *map(int, text_ids), vocab.eos_id]
    length = vocab.max_text_len + 1
    if len(ids) > length:
        ids = ids[: length - 1] + [vocab.eos_id]
    return [vocab.pad_id] * (length - len(ids)) + ids


def t2i_sequence(texts: list[list[int]], codes: torch.Tensor, vocab: ShowoVocab) -> torch.Tensor:
    """Token ids [B, max_text_len + 1 + N + 2]: the text block, <|soi|>, the N image tokens, <|eoi|>. `codes` [B, N]
    holds codebook indices, -1 where the token is still masked (it becomes the mask token)."""
    if codes.ndim != 2 or len(texts) != codes.shape[0]:
        raise ValueError(f"codes must be [B, N] with B = {len(texts)} texts, got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or ((codes < -1) | (codes >= vocab.codebook_size)).any():
        raise ValueError(f"codes must be integers in [-1, {vocab.codebook_size}), -1 for masked")
    image = torch.where(codes < 0, vocab.mask_id, codes + vocab.image_offset)
    rows = [torch.tensor(text_block(t, vocab), dtype=torch.long, device=codes.device) for t in texts]
    soi = torch.full((len(texts), 1), vocab.special("<|soi|>"), dtype=torch.long, device=codes.device)
    eoi = torch.full_like(soi, vocab.special("<|eoi|>"))
    return torch.cat([torch.stack(rows), soi, image, eoi], dim=1)


def t2i_prompts(texts: list[list[int]], codes: torch.Tensor, vocab: ShowoVocab) -> torch.Tensor:
    """The conditional sequences and their unconditional twins (empty text, same image tokens): [2B, L]."""
    return torch.cat([t2i_sequence(texts, codes, vocab), t2i_sequence([[]] * len(texts), codes, vocab)])


def omni_attention_mask(input_ids: torch.Tensor, vocab: ShowoVocab, dtype: torch.dtype = torch.float32):
    """Show-o's omni-attention as a float additive mask [B, 1, L, L] (0 = attend, dtype's min = blocked).

    Text (and the padding) is causal, and text does not see the padding; every position from <|soi|> to <|eoi|>
    sees all non-padding positions, later image tokens included. Padding rows see the padding before them (their
    output is unused; a row with no key would be undefined). A float mask, because transformers' eager attention
    reads a boolean 4-D mask differently from sdpa.
    """
    B, L = input_ids.shape
    pad = input_ids == vocab.pad_id  # [B, L]
    soi = input_ids == vocab.special("<|soi|>")
    eoi = input_ids == vocab.special("<|eoi|>")
    bad = (pad.int().diff(dim=1) > 0).any(1) | (soi.sum(1) != 1) | (eoi.sum(1) != 1)
    bad |= soi.int().argmax(1) >= eoi.int().argmax(1)
    if bad.any():
        row = int(bad.int().argmax())
        raise ValueError(
            f"row {row} of the sequence is not a text-to-image sequence (left padding, then one <|soi|> before one "
            "<|eoi|>); build it with t2i_sequence"
        )
    image = (soi.cumsum(1) - eoi.cumsum(1) + eoi.int()) > 0  # [B, L]: <|soi|> ... <|eoi|>
    causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
    text_rows = causal & (pad[:, :, None] | ~pad[:, None, :])  # [B, L(query), L(key)]
    image_rows = ~pad[:, None, :].expand(B, L, L)
    allowed = torch.where(image[:, :, None], image_rows, text_rows)
    blocked = torch.zeros(B, 1, L, L, dtype=dtype, device=input_ids.device)
    return blocked.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def showo_logits(
    model: PhiForCausalLM, input_ids: torch.Tensor, vocab: ShowoVocab, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits [B, L, V] of a text-to-image sequence under the omni-attention mask, positions 0..L-1 (padding
    included, as Show-o counts them). `mask`: the sequence's omni_attention_mask, when the caller already has it
    (it depends only on the text block, so masked decoding builds it once for all its steps)."""
    if mask is None:
        mask = omni_attention_mask(input_ids, vocab, dtype=model.dtype)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits


def image_logits(logits: torch.Tensor, vocab: ShowoVocab, num_image_tokens: int) -> torch.Tensor:
    """The image positions' logits over the codebook [B, N, codebook_size] (the sequence ends <image...> <|eoi|>)."""
    return logits[:, -(num_image_tokens + 1) : -1, vocab.image_offset : vocab.mask_id]


# ---- folders


def read_spec(path: Path) -> ShowoSpec:
    """The spec in a Show-o folder's config.json: the published one (Show-o's own fields; the LM has Phi-1.5's
    shape) or one arrag wrote (the same fields plus `phi_config`, the LM's whole config)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"Show-o folder {path} has no config.json; point it at a showlab/show-o snapshot")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{config_file} is not valid JSON ({err}): a half-written copy; write it again") from None
    missing = [k for k in ("vocab_size", "llm_vocab_size", "codebook_size", "num_vq_tokens") if k not in config]
    if missing or config.get("_class_name", "Showo") != "Showo":
        raise ModelLoadError(
            f"{config_file} is not a Show-o config (class {config.get('_class_name')!r}, lacks "
            f"{missing}); expected showlab/show-o's config.json"
        )
    if config.get("w_clip_vit"):
        raise ModelLoadError(
            f"{config_file} has w_clip_vit: true (a CLIP-ViT variant); only the VQ variant "
            "(showlab/show-o, w_clip_vit false) is supported"
        )
    try:
        vocab = ShowoVocab(
            config["llm_vocab_size"],
            config["codebook_size"],
            *(config["phi_config"][k] for k in ("bos_token_id", "eos_token_id")) if "phi_config" in config else (),
            max_text_len=config.get("max_text_len", MAX_TEXT_LEN),
        )
        phi = PhiConfig(**config["phi_config"]) if "phi_config" in config else phi_config(vocab)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"{config_file}: {err}") from None
    vocab.check(config["vocab_size"], config.get("mask_token_id"), where=str(config_file))
    vocab.check(phi.vocab_size, where=f"{config_file}'s phi_config")
    if not phi.qk_layernorm:
        raise ModelLoadError(f"{config_file}'s phi_config has qk_layernorm false; Show-o's LM normalises q and k")
    return ShowoSpec(vocab, int(config["num_vq_tokens"]), phi)


def save_showo(
    model: PhiForCausalLM, spec: ShowoSpec, directory: str | Path, *, inputs: dict | None = None, extra=None
):
    """Write a Show-o folder atomically, laid out like the published one (config.json with Show-o's fields plus
    our `phi_config`, `showo.`-prefixed tensors in pytorch_model.safetensors), its manifest last. `extra(folder)`
    writes more files before the manifest (the mini model's text tokenizer)."""
    config = {
        "_class_name": "Showo",
        "vocab_size": spec.vocab.vocab_size,
        "llm_vocab_size": spec.vocab.text_vocab_size,
        "codebook_size": spec.vocab.codebook_size,
        "num_vq_tokens": spec.num_image_tokens,
        "mask_token_id": spec.vocab.mask_id,
        "max_text_len": spec.vocab.max_text_len,  # ours: the published config leaves it to the training yaml (128)
        "w_clip_vit": False,
        "phi_config": spec.phi.to_dict(),
    }
    state = {PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory, directory=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        write_json(tmp / "config.json", config)
        if extra is not None:
            extra(tmp)
        write_manifest(tmp, "showo-model", inputs)


def copy_safetensors(model: torch.nn.Module, path: Path, prefix: str = "") -> None:
    """Fill `model` from the *.safetensors files in `path`, whose names are `prefix` + the model's state-dict
    names. Refused, naming the tensors: any the model needs but the files lack, any it has no place for, a wrong
    shape, NaN or inf. Tensors are read one at a time, so memory holds the model plus one tensor."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no *.safetensors weights; arrag loads safetensors only")
    target = model.state_dict()
    handles = [safe_open(str(f), framework="pt") for f in files]
    where = {k: h for h in handles for k in h.keys()}
    names = {k[len(prefix) :] if k.startswith(prefix) else k: k for k in where}  # model name -> file name
    shape = {n: tuple(where[k].get_slice(k).get_shape()) for n, k in names.items()}
    check_loaded_keys(
        {
            "missing_keys": [prefix + n for n in target if n not in names],
            "unexpected_keys": [k for n, k in names.items() if n not in target or not k.startswith(prefix)],
            "mismatched_keys": [prefix + n for n in target if n in names and shape[n] != target[n].shape],
        },
        path,
    )
    with torch.no_grad():
        for name, tensor in target.items():
            loaded = where[names[name]].get_tensor(names[name])
            if loaded.is_floating_point() and not torch.isfinite(loaded).all():
                raise ModelLoadError(f"{path}: tensor {names[name]} holds NaN or inf; the checkpoint is damaged")
            tensor.copy_(loaded)


VERIFY_FIX = "download or write it again; if you trust it as it is, `arrag verify --seal hub-model DIR`"


def load_showo(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a Show-o LM from a local folder (a showlab/show-o snapshot or one save_showo wrote), safetensors only,
    nothing fetched, the folder checked against its manifest and the tensors by copy_safetensors. Returns
    (model, spec)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"Show-o folder {path} does not exist")
    verify(path, fix=VERIFY_FIX)
    spec = read_spec(path)
    with no_init_weights():  # every tensor is overwritten by copy_safetensors
        model = build_showo(spec, dtype=dtype)
    copy_safetensors(model, path, PREFIX)
    return model.to(device).eval(), spec
