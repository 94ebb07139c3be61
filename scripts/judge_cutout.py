"""An independent judge of cut-outs, for benchmarks (never the product).

    $(bash scripts/judge-deps.sh cutout) scripts/judge_cutout.py DIR

DIR holds what `SHAPES=DIR cargo bench -p worker --bench vision` writes: each crop NAME.png and
its masks NAME.LABEL.png (grey, 0-255, the crop's size). The judge is MediaPipe's selfie
segmentation (general model), a person segmenter trained apart from IS-Net: for each mask, against
its person mask (both at 0.5), the IoU, the share of the person the mask keeps, and the share of
the mask that is not the person. Prints one line per crop and the means per label.
"""
import glob
import os
import sys

import mediapipe as mp
import numpy as np
from PIL import Image


def main(folder):
    seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
    rows = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.png"))):
        name = os.path.basename(path)[:-4]
        if "." in name:
            continue
        img = np.asarray(Image.open(path).convert("RGB"))
        person = seg.process(img).segmentation_mask > 0.5
        line = [name.ljust(14)]
        for mask_path in sorted(glob.glob(os.path.join(folder, name + ".*.png"))):
            label = os.path.basename(mask_path)[len(name) + 1 : -4]
            mask = np.asarray(Image.open(mask_path).convert("L")) > 127
            iou = (mask & person).sum() / max((mask | person).sum(), 1)
            kept = (mask & person).sum() / max(person.sum(), 1)
            extra = (mask & ~person).sum() / max(mask.sum(), 1)
            rows.setdefault(label, []).append((iou, kept, extra))
            line.append(f"{label} IoU {iou * 100:5.1f} kept {kept * 100:5.1f} not person {extra * 100:5.1f}")
        print(" | ".join(line))
    for label, r in rows.items():
        iou, kept, extra = (np.array([x[i] for x in r]) for i in range(3))
        print(
            f"{label}: {len(r)} crops, IoU mean {iou.mean() * 100:.1f} % (least {iou.min() * 100:.1f}), "
            f"person kept {kept.mean() * 100:.1f} %, not person {extra.mean() * 100:.1f} % of the mask"
        )


if __name__ == "__main__":
    main(sys.argv[1])
