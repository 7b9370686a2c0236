"""Every byte pystitch reads or writes goes through this package.

============  ==============================================================
``images``    input images: zarr v2/v3, OME-Zarr, TIFF; lazy reads of regions
``zarrs``     zarr arrays pystitch writes: codec, creation, overlapped I/O
``staging``   the staging store of per-block labels and face slabs
``lut``       the lut store (provisional id -> final id, block offsets)
``labels``    the output label image (plain zarr or OME-Zarr with a pyramid)
``files``     small files between steps: atomic writes, validating reads
============  ==============================================================

Nothing here knows about plans or steps: callers pass paths, grids and the
plan hash that stamps every store.
"""
