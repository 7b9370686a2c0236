"""The ``flows`` rule: Cellpose masks computed from globally followed flows (work in progress)."""
