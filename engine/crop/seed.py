"""The seed's finder (AttentionNet): a two-scale anchor detector, boxes merged, masks by intensity.

A small conv-BN-ReLU backbone from random initialisation (strides 2..16) with a light top-down
neck feeds two heads, at strides 8 and 16. Each head predicts, per anchor and position, an
objectness logit and a box (YOLOv5 parameterisation: centre offset in (-0.5, 1.5) cells, size in
(0, 4) x the anchor). The anchors are K-means++ centres of the training boxes' (w, h) under the
1 - IoU distance, the smaller half at stride 8. Training (:mod:`.seed_train`): focal
objectness + GIoU box loss.
Inference: candidate boxes above the score threshold are merged (IoU above a threshold OR centres
closer than a fraction of the boxes' size; score-weighted mean box, the leader's score), each
box is masked by Otsu's threshold inside it (largest component, holes filled), and the masks are
painted into one label image in order of decreasing score.

A checkpoint is a directory: ``weights.pt`` + ``config.json`` (model arguments with the anchors,
merge settings, training settings, validation scores), from which :class:`SeedFinder` rebuilds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .finders import Finder, normalise, register_finder
from .learned import read_checkpoint, resolve_device, save_checkpoint

STRIDES = (8, 16)
PAD = 32  # fields are padded to a multiple of this before the forward pass

__all__ = [
    "SeedFinder",
    "build_model",
    "giou",
    "kmeans_anchors",
    "mask_boxes",
    "merge_boxes",
    "otsu_mask",
    "save_checkpoint",
    "wh_iou",
]


# --- anchors ---------------------------------------------------------------------------------


def wh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes given as (w, h) and aligned on a common centre: (N, 2), (K, 2) -> (N, K)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    return inter / (a.prod(1)[:, None] + b.prod(1)[None, :] - inter)


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """K-means++ on box sizes with the distance 1 - IoU; returns (k, 2) centres by area.

    Args:
        wh: (N, 2) widths and heights of the training boxes.
        k: number of anchors.
        seed: seed of the K-means++ draws.
        iters: most Lloyd iterations (each point joins the centre of highest IoU; centres are
            the mean (w, h) of their points).
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) < k:
        raise ValueError(f"K-means++ needs at least k={k} boxes, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centres = wh[[rng.integers(len(wh))]]
    while len(centres) < k:  # K-means++: next centre drawn with probability ~ distance^2
        d2 = (1.0 - wh_iou(wh, centres).max(axis=1)) ** 2
        pick = rng.choice(len(wh), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(wh))
        centres = np.vstack([centres, wh[pick]])
    for _ in range(iters):
        assign = wh_iou(wh, centres).argmax(axis=1)
        new = np.array(
            [wh[assign == j].mean(axis=0) if (assign == j).any() else centres[j] for j in range(k)]
        )
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.prod(axis=1), kind="stable")]


# --- model -----------------------------------------------------------------------------------


def build_model(
    anchors,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    depths: tuple[int, ...] = (1, 2, 3, 3),
    head: int = 128,
):
    """The two-scale detector with random weights.

    Args:
        anchors: (2 * A, 2) anchor (w, h) in pixels by increasing area; the first A go to
            stride 8, the rest to stride 16.
        widths, depths: channels and conv-BN-ReLU blocks of the four stages (strides 2, 4, 8, 16).
        head: channels of the neck and the heads.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if len(widths) != 4 or len(depths) != 4:
        raise ValueError(f"widths and depths need 4 stages each, got {widths} and {depths}")
    anchors = torch.as_tensor(np.asarray(anchors, dtype=np.float32))
    if anchors.ndim != 2 or anchors.shape[1] != 2 or len(anchors) % 2:
        raise ValueError(f"anchors must be (2 * A, 2) widths/heights, got {tuple(anchors.shape)}")
    per_level = len(anchors) // 2

    def block(cin: int, cout: int, stride: int = 1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
        )

    class SeedNet(nn.Module):
        def __init__(self):
            super().__init__()
            cin, stages = 1, []
            for w, d in zip(widths, depths):
                stages.append(nn.Sequential(block(cin, w, 2), *[block(w, w) for _ in range(d - 1)]))
                cin = w
            self.stages = nn.ModuleList(stages)
            self.lateral = nn.ModuleList(
                [nn.Conv2d(widths[2], head, 1), nn.Conv2d(widths[3], head, 1)]
            )
            self.heads = nn.ModuleList(
                nn.Sequential(block(head, head), nn.Conv2d(head, per_level * 5, 1)) for _ in STRIDES
            )
            prior = -float(np.log((1 - 0.01) / 0.01))  # objectness starts at p = 0.01
            for h in self.heads:
                h[-1].bias.data.view(per_level, 5)[:, 4] = prior
            self.register_buffer("anchors", anchors.view(2, per_level, 2).clone())

        def forward(self, x):
            """(B, 1, H, W), H and W multiples of 16 -> [(B, A, 5, H/8, W/8), (B, A, 5, H/16, W/16)]."""
            feats = []
            for stage in self.stages:
                x = stage(x)
                feats.append(x)
            p16 = self.lateral[1](feats[3])
            p8 = self.lateral[0](feats[2]) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
            return [h(p).unflatten(1, (per_level, 5)) for h, p in zip(self.heads, (p8, p16))]

    return SeedNet()


def decode(raw, anchors, stride: int, index=None):
    """Boxes (x0, y0, x1, y1 pixels) and objectness logits from one head's output.

    Args:
        raw: (B, A, 5, H, W) head output.
        anchors: (A, 2) anchor sizes of this head.
        index: optional (b, a, gy, gx) tensors: decode only these positions -> (P, 4), (P,).

    Returns:
        (B, A, H, W, 4) boxes and (B, A, H, W) logits, or the indexed (P, 4), (P,).
    """
    import torch

    raw = raw.float()
    if index is None:
        b, a, _, h, w = raw.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij"
        )
        t = raw.permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5)
        anc = anchors.view(1, -1, 1, 1, 2)
    else:
        bi, ai, gy, gx = index
        t = raw[bi, ai, :, gy, gx]  # (P, 5)
        anc = anchors[ai]
    s = t[..., :4].sigmoid()
    cx = (gx + 2 * s[..., 0] - 0.5) * stride
    cy = (gy + 2 * s[..., 1] - 0.5) * stride
    bw = anc[..., 0] * (2 * s[..., 2]) ** 2
    bh = anc[..., 1] * (2 * s[..., 3]) ** 2
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
    return boxes, t[..., 4]


# --- GIoU (the box loss is 1 - GIoU; targets and loss in seed_train.py) -------------------------


def giou(a, b):
    """Generalised IoU of paired boxes (x0, y0, x1, y1): (N, 4), (N, 4) -> (N,)."""
    import torch

    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    return inter / union.clamp(min=1e-7) - (hull - union) / hull.clamp(min=1e-7)


# --- merging and masks -----------------------------------------------------------------------


def merge_boxes(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5, centre_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's merge rule in place of NMS.

    In order of decreasing score, the best box left gathers every box left whose IoU with it
    exceeds ``iou_threshold`` OR whose centre lies closer to its centre than ``centre_fraction``
    x the two boxes' mean size (size = sqrt(w h)). The group becomes one box, the score-weighted
    mean of its boxes, with the leader's score.

    Returns:
        (M, 4) merged boxes and (M,) scores, by decreasing score.
    """
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    x0, y0, x1, y1 = boxes.astype(np.float32).T
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    inter = np.clip(np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0), 0, None)
    inter *= np.clip(np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0), 0, None)
    joined = inter > iou_threshold * np.maximum(area[:, None] + area - inter, 1e-9)  # IoU > t
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, np.sqrt(area)
    reach = centre_fraction * (size[:, None] + size) / 2
    joined |= (cx[:, None] - cx) ** 2 + (cy[:, None] - cy) ** 2 < reach * reach
    used = np.zeros(len(boxes), dtype=bool)
    out_boxes, out_scores = [], []
    for i in range(len(boxes)):
        if used[i]:
            continue
        group = joined[i] & ~used
        group[i] = True
        used |= group
        w = scores[group]
        out_boxes.append((boxes[group] * w[:, None]).sum(axis=0) / w.sum())
        out_scores.append(scores[i])
    return np.array(out_boxes).reshape(-1, 4), np.array(out_scores)


def otsu_mask(values: np.ndarray) -> np.ndarray:
    """Pixels above Otsu's threshold (256 bins over the values' range); all False if flat."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=bool)
    q = ((values - lo) * (255.999 / (hi - lo))).astype(np.intp)  # bin of each pixel
    hist = np.bincount(q.ravel(), minlength=256).astype(np.float64)
    w0 = np.cumsum(hist)[:-1]  # pixels at or below each candidate bin
    w1 = hist.sum() - w0
    m0 = np.cumsum(hist * np.arange(256))[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] + 255 * hist[-1] - m0) / w1) ** 2
    return q > int(np.nanargmax(between))


def box_mask(image: np.ndarray, box, margin: float = 0.3):
    """The seed's mask of one box: Otsu's threshold inside the box, largest component, filled.

    Args:
        image: (H, W) float field.
        box: x0, y0, x1, y1 in pixels. The threshold is computed on the box widened by
            ``margin`` x its longer side (so background is always in view); the mask is kept
            within the box plus 1 px.

    Returns:
        (ys, xs, mask) with the mask's slices into the field, or None where nothing stands out.
    """
    from scipy import ndimage as ndi

    h, w = image.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    pad = max(1.0, margin * max(x1 - x0, y1 - y0))
    ys = slice(max(int(np.floor(y0 - pad)), 0), min(int(np.ceil(y1 + pad)), h))
    xs = slice(max(int(np.floor(x0 - pad)), 0), min(int(np.ceil(x1 + pad)), w))
    crop = image[ys, xs]
    if crop.size < 4:
        return None
    fg = otsu_mask(crop)
    yy, xx = np.ogrid[ys, xs]
    fg &= (yy >= y0 - 1) & (yy < y1 + 1) & (xx >= x0 - 1) & (xx < x1 + 1)
    parts, n = ndi.label(fg)
    if n == 0:
        return None
    if n > 1:
        fg = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    holes, n = ndi.label(~fg)  # background pieces; those off the crop's edge are holes
    outside = np.zeros(n + 1, dtype=bool)
    outside[np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])] = True
    outside[0] = False
    return ys, xs, ~outside[holes]


def mask_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    keep: float = 0.5,
    min_pixels: int = 4,
    margin: float = 0.3,
) -> np.ndarray:
    """Label image from boxes (by decreasing score): each box's :func:`box_mask`, painted where
    free; a mask keeping less than ``keep`` of its pixels (or fewer than ``min_pixels``) is dropped."""
    labels = np.zeros(image.shape, dtype=np.int32)
    n = 0
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        found = box_mask(image, boxes[i], margin)
        if found is None:
            continue
        ys, xs, m = found
        region = labels[ys, xs]
        free = m & (region == 0)
        count = int(free.sum())
        if count < max(min_pixels, keep * m.sum()):
            continue
        n += 1
        region[free] = n
    return labels


# --- the finder ------------------------------------------------------------------------------


@register_finder("seed")
class SeedFinder(Finder):
    """The seed's detector loaded from a ``cytotune crop train --model seed`` checkpoint.

    Args:
        checkpoint: checkpoint directory (``weights.pt`` + ``config.json``).
        device: "auto", "cpu" or "cuda[:i]".
        score_threshold, iou_threshold, centre_fraction: candidates kept and the merge rule;
        mask_margin: :func:`box_mask`'s margin (defaults: the checkpoint's).
        batch_size: fields per forward pass in :meth:`find_many`.
        max_candidates: most candidate boxes per field going into the merge.
        model, config: an in-memory model instead of a checkpoint (training, benchmarks).
    """

    processes = False

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        centre_fraction: float | None = None,
        mask_margin: float | None = None,
        batch_size: int = 8,
        max_candidates: int = 3000,
        model=None,
        config: dict | None = None,
    ) -> None:

        self.device = resolve_device(device)
        if model is None:
            config, state = read_checkpoint(checkpoint, "seed")
            model = build_model(**config["model"])
            model.load_state_dict(state)
        self.config = config or {}
        self.model = model.to(self.device).eval()
        given = {"score_threshold": score_threshold, "iou_threshold": iou_threshold,
                 "centre_fraction": centre_fraction, "mask_margin": mask_margin}  # fmt: skip
        defaults = {"score_threshold": 0.5, "iou_threshold": 0.5, "centre_fraction": 0.3,
                    "mask_margin": 0.3}  # fmt: skip
        for key, value in given.items():
            setattr(
                self, key, float(self.config.get(key, defaults[key]) if value is None else value)
            )
        self.batch_size, self.max_candidates = int(batch_size), int(max_candidates)
        self.checkpoint = None if checkpoint is None else str(checkpoint)

    def describe(self) -> dict:
        return {
            "finder": self.name,
            "checkpoint": self.checkpoint,
            "model": {k: v for k, v in self.config.get("model", {}).items() if k != "anchors"},
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "centre_fraction": self.centre_fraction,
            "mask_margin": self.mask_margin,
        }

    def find(self, image: np.ndarray) -> np.ndarray:
        return self.find_many([image])[0]

    def find_many(self, images) -> list[np.ndarray]:
        fields = [self._normalise(image) for image in images]
        return [self.labels(f, b, s) for f, (b, s) in zip(fields, self.candidates(fields))]

    def labels(self, field: np.ndarray, boxes, scores, threshold: float | None = None):
        """Label image of a normalised field from its candidates (scores above ``threshold``)."""
        keep = scores >= (self.score_threshold if threshold is None else threshold)
        boxes, scores = merge_boxes(
            boxes[keep], scores[keep], self.iou_threshold, self.centre_fraction
        )
        return mask_boxes(field, boxes, scores, margin=self.mask_margin)

    @staticmethod
    def _normalise(image: np.ndarray) -> np.ndarray:
        if np.ndim(image) != 2:
            raise ValueError(f"a finder takes one 2-D channel, got shape {np.shape(image)}")
        return normalise(image)

    def candidates(self, fields: list[np.ndarray], threshold: float | None = None):
        """(boxes (N, 4), scores (N,)) above ``threshold`` for normalised fields, on the CPU."""
        import torch
        import torch.nn.functional as F

        threshold = self.score_threshold if threshold is None else threshold
        out = [None] * len(fields)
        order = sorted(range(len(fields)), key=lambda i: fields[i].shape)  # batch alike sizes
        cuda = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            for start in range(0, len(fields), self.batch_size):
                rows = order[start : start + self.batch_size]
                chunk = [fields[i] for i in rows]
                h = max(f.shape[0] for f in chunk)
                w = max(f.shape[1] for f in chunk)
                hp, wp = -(-h // PAD) * PAD, -(-w // PAD) * PAD
                x = torch.stack([F.pad(torch.from_numpy(f), (0, wp - f.shape[1], 0, hp - f.shape[0]))
                                 for f in chunk])[:, None].to(self.device, non_blocking=True)  # fmt: skip
                raw = self.model(x)
                parts = [decode(r, self.model.anchors[i], STRIDES[i]) for i, r in enumerate(raw)]
                boxes = torch.cat([b.flatten(1, 3) for b, _ in parts], 1)  # (B, N, 4)
                scores = torch.cat([s.flatten(1) for _, s in parts], 1).sigmoid()  # (B, N)
                for row, f, b, s in zip(rows, chunk, boxes, scores):
                    keep = s >= threshold
                    b, s = b[keep], s[keep]
                    if len(s) > self.max_candidates:
                        s, top = s.topk(self.max_candidates)
                        b = b[top]
                    size = b.new_tensor([f.shape[1], f.shape[0]] * 2)
                    b = torch.minimum(b.clamp(min=0), size)
                    out[row] = (b.float().cpu().numpy(), s.float().cpu().numpy())
        return out
