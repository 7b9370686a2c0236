#!/usr/bin/env python3
"""Download built-in Cellpose models into CELLPOSE_LOCAL_MODELS_PATH.

Usage: fetch-cellpose-models.py NAME [NAME ...]      e.g. cyto3 nuclei

Used by containers/gpu/Dockerfile (build argument CELLPOSE_MODELS) to pre-bake
models into the GPU image, so that `--model NAME` works in containers without
internet access.  For each name, cellpose's own download function fetches the
weights, and for the models that have one (cyto, cyto2, cyto3, nuclei) the
size model, into cellpose's model directory: exactly the files cellpose looks
for before it would download them at run time.

Unknown names are an error (listing the known ones) before anything is
downloaded; an interrupted or failed download exits non-zero and fails the
build.  Works with cellpose 3.x, whose built-in models are per-file downloads.
"""

import sys

# models that come with a separate size model (cellpose 3.x)
WITH_SIZE_MODEL = {"cyto", "cyto2", "cyto3", "nuclei"}


def main(names: list[str]) -> int:
    if not names or names[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if names else 2
    from cellpose import models

    known = set(getattr(models, "MODEL_NAMES", [])) | WITH_SIZE_MODEL
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"fetch-cellpose-models: unknown model(s) {', '.join(unknown)}; "
              f"known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    for name in dict.fromkeys(names):
        try:
            files = [models.model_path(name)]
            if name in WITH_SIZE_MODEL:
                files.append(models.size_model_path(name))
        except OSError as exc:  # URLError, connection errors, a full disk
            print(f"fetch-cellpose-models: could not download model {name!r} from {models._MODEL_URL} "
                  f"({type(exc).__name__}: {exc}); the build needs internet access for CELLPOSE_MODELS",
                  file=sys.stderr)
            return 1
        for path in files:
            print(f"fetch-cellpose-models: {name}: {path}", file=sys.stderr)
    print(f"fetch-cellpose-models: models in {models.MODEL_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
