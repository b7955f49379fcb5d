"""Writes a copy of a model whose weights carry deterministic noise.

The quality gate must tell a model from a damaged copy of it; this makes the
copy. Run with the vLLM virtualenv's interpreter (it needs torch and
safetensors): ``.venv-vllm/bin/python runtime/kvpilot_runtime/perturb_model.py
SCALE SEED SRC_DIR OUT_DIR``. Kept apart from ``tiny_model.py``, whose
contents key the tiny model's cache.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def perturb(src: Path, out: Path, scale: float, seed: int) -> None:
    """Copies the model in ``src`` with Gaussian noise of ``scale`` times each weight's std added.

    Every floating-point tensor of two or more dimensions (embeddings,
    projections, the LM head) is perturbed; norm weights are left as they are,
    as quantization leaves them. The noise comes from one seeded generator,
    tensors in name order, so the copy is the same on every machine.
    """
    import torch  # type: ignore[import-not-found,unused-ignore]
    from safetensors.torch import load_file, save_file  # type: ignore[import-not-found,unused-ignore]

    shutil.copytree(src, out)
    gen = torch.Generator().manual_seed(seed)
    for path in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(path))
        for name in sorted(tensors):
            t = tensors[name]
            if t.is_floating_point() and t.dim() >= 2:
                w = t.float()
                noise = torch.randn(w.shape, generator=gen) * (scale * float(w.std()))
                tensors[name] = (w + noise).to(t.dtype)
        save_file(tensors, str(path), metadata={"format": "pt"})
    meta_path = out / "kvpilot-tiny.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta["perturbation"] = {"scale": scale, "seed": seed}
        meta_path.write_text(json.dumps(meta, sort_keys=True))


if __name__ == "__main__":
    perturb(Path(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[1]), int(sys.argv[2]))
