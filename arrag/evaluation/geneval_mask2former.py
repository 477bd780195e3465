"""GenEval's paper detector: Mask2Former (Swin-S, COCO, mmdetection 2.x) boxes and masks, and zero-shot CLIP
colours on the masked crop -- the backend the official evaluator uses, as a `Detector` for
arrag.evaluation.geneval (whose rules are the same as the evaluator's).

It runs in its own conda environment (workflow/envs/geneval.yaml: mmcv-full 1.x + mmdet 2.x + open_clip),
which is why mmdet and open_clip are imported inside the functions that need them.

What the official evaluator does, and so do we:
- the detector's per-class [n, 5] (x0, y0, x1, y1, score) arrays and per-class masks, in COCO's 80 class
  names (object_names.txt, vendored in arrag/prompt_sets/geneval/);
- a detection's colour: the image composited over a #999 grey blank through its mask, cropped to its box,
  classified by CLIP ViT-L/14 (OpenAI weights) against the 10 GenEval colours with three prompt templates
  per colour that name the class; a class's classifier is the mean of the normalised template embeddings.

Weights: the Mask2Former checkpoint is a pickle from the OpenMMLab zoo, so it is never unpickled as such:
its SHA-256 must start with the 8 hex digits OpenMMLab puts in the file name, and its state dict is read
with torch.load(weights_only=True) into a detector built without weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arrag.data.downloads import check_sha256
from arrag.evaluation.geneval import Detection

GENEVAL_COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
COLOUR_TEMPLATES = ["a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object"]
CONFIG_NAME = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
CHECKPOINT_URL = (
    "https://download.openmmlab.com/mmdetection/v2.0/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco/"
    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth"
)
CHECKPOINT_SHA256_PREFIX = "743b7d99"  # OpenMMLab names a checkpoint after the first 8 hex digits of its SHA-256
BLANK = "#999"  # the evaluator's default background for masked crops


def class_names() -> list[str]:
    """COCO's 80 class names in the detector's output order (GenEval's object_names.txt)."""
    path = Path(__file__).resolve().parents[1] / "prompt_sets" / "geneval" / "object_names.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def detections_from_mmdet(result, classnames: Sequence[str], min_score: float = 0.3) -> list[tuple]:
    """mmdet 2.x `inference_detector` output -> [(label, score, box, mask or None)] scoring above min_score.

    result is (bbox_results, segm_results) for a mask model, or bbox_results alone: bbox_results[c] is a
    [n, 5] array for class c, segm_results[c] a list of n boolean [H, W] masks.
    """
    bboxes, masks = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    if len(bboxes) != len(classnames):
        raise ValueError(f"the detector returned {len(bboxes)} classes, GenEval's object_names has {len(classnames)}")
    found = []
    for c, name in enumerate(classnames):
        for i, row in enumerate(np.asarray(bboxes[c]).reshape(-1, 5)):
            if row[4] > min_score:
                mask = None if masks is None else np.asarray(masks[c][i], dtype=bool)
                found.append((name, float(row[4]), tuple(float(v) for v in row[:4]), mask))
    return found


def masked_crop(image: np.ndarray, box: Sequence[float], mask: np.ndarray | None, blank: str = BLANK) -> Image.Image:
    """The evaluator's colour crop: the object through its mask over a plain blank, cut to its box."""
    pil = Image.fromarray(image).convert("RGB")
    if mask is not None:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
        pil = Image.composite(pil, Image.new("RGB", pil.size, color=blank), Image.fromarray(mask))
    return pil.crop(tuple(box[:4]))


class ColourClassifier:
    """Zero-shot CLIP colour of a crop among GENEVAL_COLOURS, with one classifier per object class (the
    templates name the class). Written here rather than taken from clip_benchmark: it is one mean of
    normalised text embeddings per colour, and it keeps the dependency out of our package."""

    def __init__(self, model, preprocess, tokenizer, device: str | torch.device = "cpu"):
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer
        self.device = torch.device(device)
        self._weights: dict[str, torch.Tensor] = {}

    @classmethod
    def from_open_clip(cls, model_name: str = "ViT-L-14-quickgelu", pretrained: str = "openai", device="cpu"):
        """OpenAI's ViT-L/14 as the evaluator uses it; open_clip >= 2.29 needs the -quickgelu name for the
        OpenAI weights to run with the activation they were trained with. `pretrained` may be a local file."""
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        return cls(model, preprocess, open_clip.get_tokenizer(model_name), device)

    @torch.no_grad()
    def class_weights(self, classname: str) -> torch.Tensor:
        """[D, 10]: per colour, the normalised mean of its normalised template embeddings."""
        if classname not in self._weights:
            columns = []
            for colour in GENEVAL_COLOURS:
                texts = [t.format(c=colour, cls=classname) for t in COLOUR_TEMPLATES]
                emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()  # [3, D]
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                columns.append(emb / emb.norm())
            self._weights[classname] = torch.stack(columns, dim=1)
        return self._weights[classname]

    @torch.no_grad()
    def __call__(self, crops: Sequence[Image.Image], classname: str) -> list[str]:
        if not crops:
            return []
        pixels = torch.stack([self.preprocess(c) for c in crops]).to(self.device)
        feats = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)  # [n, D]
        logits = feats @ self.class_weights(classname)  # [n, 10]
        return [GENEVAL_COLOURS[i] for i in logits.argmax(1).tolist()]


class Mask2FormerCLIPDetector:
    """image uint8 [H, W, 3] -> [Detection] with boxes, masks and CLIP colours (a GenEval `Detector`).

    `detect` maps an RGB image to mmdet's raw output; `from_checkpoint` builds it from mmdetection. Colours
    are classified for the best max_objects detections of each class above min_score, the only ones the
    rules can look at.
    """

    def __init__(
        self,
        detect: Callable[[np.ndarray], object],
        colours: ColourClassifier,
        classnames: Sequence[str] | None = None,
        min_score: float = 0.3,
        max_objects: int = 16,
    ):
        self.detect, self.colours = detect, colours
        self.classnames = list(classnames) if classnames is not None else class_names()
        self.min_score, self.max_objects = min_score, max_objects

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        config: str | Path | None = None,
        clip_pretrained: str = "openai",
        device: str = "cuda",
        verify: bool = True,
    ) -> Mask2FormerCLIPDetector:
        detector = load_mask2former(checkpoint, config, device, verify)
        from mmdet.apis import inference_detector

        def detect(image: np.ndarray):
            return inference_detector(detector, np.ascontiguousarray(image[..., ::-1]))  # mmdet reads BGR, as cv2

        return cls(detect, ColourClassifier.from_open_clip(pretrained=clip_pretrained, device=device))

    def __call__(self, image: np.ndarray) -> list[Detection]:
        found = detections_from_mmdet(self.detect(image), self.classnames, self.min_score)
        by_class: dict[str, list[tuple]] = {}
        for d in sorted(found, key=lambda d: -d[1]):
            if len(by_class.setdefault(d[0], [])) < self.max_objects:
                by_class[d[0]].append(d)
        out = []
        for name, dets in by_class.items():
            colours = self.colours([masked_crop(image, box, mask) for _, _, box, mask in dets], name)
            out += [Detection(name, score, box, mask, colour) for (_, score, box, mask), colour in zip(dets, colours)]
        return out


def check_checkpoint(path: str | Path, sha256_prefix: str = CHECKPOINT_SHA256_PREFIX) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Mask2Former checkpoint {path} not found: run the rule download_geneval_detector "
            f"(`arrag download geneval-detector --out {path}`) or download {CHECKPOINT_URL} to that path"
        )
    check_sha256(path, sha256_prefix, CHECKPOINT_URL)
    return path


def default_config() -> Path:
    """The Mask2Former config inside the installed mmdetection (a source checkout or a wheel's .mim copy)."""
    import mmdet

    root = Path(mmdet.__file__).parent
    for candidate in (root.parent / "configs", root / ".mim" / "configs"):
        path = candidate / "mask2former" / f"{CONFIG_NAME}.py"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{CONFIG_NAME}.py is not in the installed mmdet ({root}): pass its path as the config")


def load_mask2former(checkpoint: str | Path, config: str | Path | None = None, device: str = "cuda", verify=True):
    """The detector with the checkpoint's weights, read without unpickling arbitrary objects."""
    from mmdet.apis import init_detector

    path = check_checkpoint(checkpoint) if verify else Path(checkpoint)
    model = init_detector(str(config or default_config()), checkpoint=None, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    model.CLASSES = tuple(class_names())
    return model.to(device).eval()
