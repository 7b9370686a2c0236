"""Peak memory (and time) of Cellpose per block size: the numbers behind
``--block-shape auto`` (pystitch/backends/cellpose_backend.py).

    python benchmarks/cellpose_memory.py [--model FILE] [--device cpu|cuda]

Each measurement runs in a fresh process (peak RSS of that process; on CUDA
also torch's peak allocated GPU memory) with a model given by path — the
small model of tests/support/tiny_cellpose.py by default, which has the
standard Cellpose 3 network, so memory and time are those of cyto3-sized
models.  Results go to benchmarks/results/cellpose-memory-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {support!r})
import tiny_cellpose as tc
from pystitch.backends.cellpose import CellposeSegmenter
torch.set_num_threads({threads})
shape, mode, device = {shape!r}, {mode!r}, {device!r}
img, _ = tc.synthetic_blobs(shape, seed=0)
kw = dict(do_3D=True) if mode == "do_3D" else (dict(stitch_threshold=0.3) if len(shape) == 3 else {{}})
seg = CellposeSegmenter(pretrained_model={model!r}, diameter=18, lowhigh=[[0.0, 1.0]], device=device, **kw)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
seg(img.astype(np.float32))
dt_ = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
print(json.dumps(dict(shape=list(shape), mode=mode, voxels=int(np.prod(shape)), seconds=dt_, base_bytes=base,
                      peak_bytes=peak, gpu_peak_bytes=gpu)))
"""

CASES = [((256, 256), "2-D"), ((512, 512), "2-D"), ((16, 96, 96), "planes"), ((32, 192, 192), "planes"),
         ((16, 64, 64), "do_3D"), ((24, 96, 96), "do_3D")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model file (default: the small test model, trained if missing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests" / "support"))
    import tiny_cellpose

    model = args.model or str(tiny_cellpose.tiny_model_path())
    rows = []
    for shape, mode in CASES:
        code = CHILD.format(support=str(HERE.parent / "tests" / "support"), threads=args.threads, shape=shape,
                            mode=mode, device=args.device, model=model)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["bytes_per_voxel"] = (row["peak_bytes"] - row["base_bytes"]) / row["voxels"]
        rows.append(row)
        print(row, flush=True)
    lines = [f"# Cellpose memory per block — {dt.date.today().isoformat()}", "",
             f"device {args.device}, {args.threads} threads, model {Path(model).name}", "",
             "| shape | mode | voxels | seconds | base RSS MiB | peak RSS MiB | (peak - base) bytes/voxel | GPU peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {tuple(r['shape'])} | {r['mode']} | {r['voxels']} | {r['seconds']:.1f} | "
                     f"{r['base_bytes'] / 2**20:.0f} | {r['peak_bytes'] / 2**20:.0f} | {r['bytes_per_voxel']:.0f} | "
                     f"{r['gpu_peak_bytes'] / 2**20:.0f} |")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"cellpose-memory-{dt.date.today().isoformat()}-{args.device}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path)


if __name__ == "__main__":
    main()
