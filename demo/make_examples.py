"""Write the demo's example X-rays to assets/examples/: SynthCXR phantoms, never patient data.

    python -m demo.make_examples [--out assets/examples]

Reproducible: each example is phantom ``index`` of the held-out set ``SEED`` (the embedded
weights are trained on other seeds) with its findings chosen here, so the gallery always shows
one normal chest and one of each finding a first-time user looks for. One is written as DICOM
the way the SynthCXR dataset writes it, so the gallery also exercises the DICOM path.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from rrg_core.phantoms import PhantomConfig, make_phantom, random_finding, write_dicom
from rrg_core.xray_io import to_uint8

SEED = 9001
SIZE = 256
# file stem -> the observations the phantom has (index = position in this table)
EXAMPLES: dict[str, tuple[str, ...]] = {
    "normal": (),
    "pleural_effusion": ("Pleural Effusion",),
    "cardiomegaly": ("Cardiomegaly",),
    "support_devices": ("Support Devices",),
    "pneumothorax": ("Pneumothorax",),
}
DICOM_EXAMPLE = "pleural_effusion"
OUT = Path(__file__).resolve().parents[1] / "assets" / "examples"


def write_examples(out: Path = OUT) -> list[Path]:
    """Write every example; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    config = PhantomConfig(size=SIZE)
    paths = []
    for index, (stem, observations) in enumerate(EXAMPLES.items()):
        rng = np.random.default_rng([SEED, index, 1])
        findings = [random_finding(name, rng) for name in observations]
        phantom = make_phantom(SEED, index, config, findings=findings)
        if stem == DICOM_EXAMPLE:
            paths.append(write_dicom(out / f"{stem}.dcm", phantom, index))
        else:
            path = out / f"{stem}.png"
            Image.fromarray(to_uint8(phantom.image)).save(path, optimize=True)
            paths.append(path)
        print(f"{paths[-1].name}: {phantom.report}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    paths = write_examples(args.out)
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths) / 1024:.0f} KiB in {args.out}")


if __name__ == "__main__":
    main()
