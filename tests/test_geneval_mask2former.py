"""The paper's GenEval backend without mmdetection: its output conversion, the evaluator's masked colour crop,
the CLIP colour classifier (on a tiny random-weight open_clip model) and the checkpoint checks."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from arrag.evaluation import geneval as ge
from arrag.evaluation import geneval_mask2former as m2f


@pytest.fixture(scope="module")
def colour_classifier(tiny_clip):
    import open_clip

    name, weights, _ = tiny_clip
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights))
    return m2f.ColourClassifier(model.eval(), preprocess, open_clip.get_tokenizer(name))


def test_class_names_are_cocos_80():
    names = m2f.class_names()
    assert len(names) == 80 and names[0] == "person" and "toothbrush" in names


def test_detections_from_mmdet_keeps_scores_above_threshold_with_masks():
    names = ["cat", "dog"]
    bboxes = [np.array([[0, 0, 4, 4, 0.9], [1, 1, 3, 3, 0.2]]), np.zeros((0, 5))]
    masks = [[np.ones((8, 8), bool), np.zeros((8, 8), bool)], []]
    found = m2f.detections_from_mmdet((bboxes, masks), names)
    assert found[0][:3] == ("cat", 0.9, (0.0, 0.0, 4.0, 4.0)) and found[0][3].all()
    assert len(found) == 1
    assert m2f.detections_from_mmdet(bboxes, names)[0][3] is None  # a box-only model
    with pytest.raises(ValueError, match="80"):
        m2f.detections_from_mmdet(bboxes, m2f.class_names())


def test_masked_crop_is_object_over_grey_cut_to_box():
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:6, 2:6] = (255, 0, 0)
    mask = np.zeros((8, 8), bool)
    mask[3:5, 3:5] = True
    crop = np.asarray(m2f.masked_crop(image, (2, 2, 6, 6), mask))
    assert crop.shape == (4, 4, 3)
    assert (crop[1:3, 1:3] == (255, 0, 0)).all()  # inside the mask: the object
    assert (crop[0] == 0x99).all()  # outside: the evaluator's #999 blank, not the image
    with pytest.raises(ValueError, match="does not match"):
        m2f.masked_crop(image, (0, 0, 2, 2), np.ones((4, 4), bool))


def test_colour_classifier_is_argmax_of_mean_template_embeddings(colour_classifier):
    clf = colour_classifier
    crops = [Image.fromarray(np.full((12, 12, 3), c, np.uint8)) for c in [(255, 0, 0), (0, 0, 255), (250, 250, 250)]]
    got = clf(crops, "cup")
    with torch.no_grad():  # direct recomputation
        feats = clf.model.encode_image(torch.stack([clf.preprocess(c) for c in crops]))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        scores = []
        for colour in m2f.GENEVAL_COLOURS:
            texts = [f"a photo of a {colour} cup", f"a photo of a {colour}-colored cup"]
            texts.append(f"a photo of a {colour} object")
            t = clf.model.encode_text(clf.tokenizer(texts))
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            scores.append(feats @ (t / t.norm()))
    assert got == [m2f.GENEVAL_COLOURS[i] for i in torch.stack(scores, 1).argmax(1).tolist()]
    assert clf.class_weights("cup").shape == (16, 10)
    assert not torch.equal(clf.class_weights("cup"), clf.class_weights("dog"))  # the templates name the class


def test_detector_feeds_the_geneval_rules(colour_classifier):
    """Boxes above 0.3, the best max_objects per class, each with its crop's colour, go through GenEval's rules."""
    names = m2f.class_names()
    image = np.zeros((16, 16, 3), np.uint8)
    bboxes = [np.zeros((0, 5)) for _ in names]
    masks = [[] for _ in names]
    cup = names.index("cup")
    bboxes[cup] = np.array([[0, 0, 8, 8, 0.95], [8, 8, 16, 16, 0.5], [0, 8, 8, 16, 0.1]])
    masks[cup] = [np.ones((16, 16), bool)] * 3
    detector = m2f.Mask2FormerCLIPDetector(lambda img: (bboxes, masks), colour_classifier, max_objects=1)
    dets = detector(image)
    assert [(d.label, d.score) for d in dets] == [("cup", 0.95)]  # above 0.3, best max_objects per class
    assert dets[0].colour in m2f.GENEVAL_COLOURS

    crops_seen = []

    def always_red(crops, classname):
        crops_seen.extend((np.asarray(c).shape, classname) for c in crops)
        return ["red"] * len(crops)

    dets = m2f.Mask2FormerCLIPDetector(lambda img: (bboxes, masks), always_red, max_objects=2)(image)
    assert crops_seen == [((8, 8, 3), "cup"), ((8, 8, 3), "cup")]  # each kept box cropped, named by its class
    red = {"tag": "colors", "include": [{"class": "cup", "count": 2, "color": "red"}], "prompt": "p"}
    blue = {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "blue"}], "prompt": "p"}
    assert ge.evaluate_image(red, dets)[0] and not ge.evaluate_image(blue, dets)[0]


def test_prompts_naming_classes_the_detector_cannot_detect_are_refused(tmp_path):
    from arrag.data.geneval_layout import write_prompt_folder

    meta = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    write_prompt_folder(tmp_path, 0, meta, np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\['circle'\].*evaluation.geneval.prompts: official"):
        ge.check_detector_classes(tmp_path, m2f.class_names(), "mask2former")
    ge.check_detector_classes(tmp_path, ["circle", "square"], "shapes")


def test_checkpoint_must_exist_and_match_published_hash(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_geneval_detector"):
        m2f.check_checkpoint(tmp_path / "missing.pth")
    path = tmp_path / "m2f.pth"
    path.write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="does not match the pinned 743b7d99"):
        m2f.check_checkpoint(path)
    prefix = hashlib.sha256(b"not the checkpoint").hexdigest()[:8]
    assert m2f.check_checkpoint(path, sha256_prefix=prefix) == path
