"""The ``flows`` rule: Cellpose's masks computed from flows followed globally.

Cellpose turns the network's flows ``dP`` and cell probability into masks in
steps that are either local or can be summed over blocks.  This package holds
those steps as array functions over blocks (with their global offset) plus
small global merges, and reproduces the installed cellpose's own result
(``cellpose.dynamics.resize_and_compute_masks`` on the whole image, CPU path)
exactly -- the same label values, not only the same partition -- and, from
the image, ``CellposeModel.eval``'s flows, cell probability and masks:

=========  ===================================  =============================================
step       module                               crosses task boundaries (n: foreground voxels)
=========  ===================================  =============================================
predict    :mod:`.predict` (``_core._resize``)  in: the image under the block's own forward
                                                batches (the whole image's tile layout); out:
                                                their tiles' outputs (12 B per tile pixel);
                                                a block blends its core from the tiles over it
follow     :mod:`.follow` (+ ``_core._flows``)  in: flows + probability of core + halo;
                                                out: end point per voxel (8 n bytes) and a
                                                histogram piece (16 B per distinct end point)
seeds      :mod:`.seeds`                        per region: histogram within 7 voxels; out:
                                                seeds (16 B each); global: rank all seeds
                                                (cellpose's sort); per region: seed regions
                                                (16 B per entry)
assign     :mod:`.assign`                       in: end points + region map within the halo;
                                                out: seed labels (staged) + per-object sums
                                                (48 + 16 ndim B per object and block)
filters    :mod:`.filters`                      global table + one object's bounding box of
                                                seed labels (and flows, 2-D) at a time; out:
                                                ``seed label -> id`` and filled-hole voxels
=========  ===================================  =============================================

:mod:`.blockwise` composes them in memory over a block grid (the reference for
the pipeline's tasks); :mod:`.dynamics` names what differs between cellpose
3.1 and 4.x and checks the compiled kernels against the installed torch.

What makes it exact (each found by comparing with cellpose bit for bit):

* the dynamics use the *whole image's* shape (grid_sample normalises positions
  by it; cellpose 3 clamps to it) and cellpose's float types per operation:
  cellpose 3's 2-D numba kernel mixes float64 and float32 terms; torch's
  vectorised 2-D ``grid_sample`` fuses multiply-adds on AVX2/AVX-512 builds
  (calibrated at run time), its 3-D kernel does not; torch multiplies and
  divides float32 by Python floats rounded to float32;
* seeds are ranked by ``torch.argsort`` of their int32 counts in position
  order -- not a stable sort, so the ranking is done once on all seeds;
* cellpose 4's 2-D flow check takes border flows from *neighbouring* masks'
  diffusion, iterates ``2 * max(h + w + 2)`` over the whole image, switches to
  float32 above 4e7 pixels, and torch sums the nine neighbours of the last
  ``N mod 16`` (float64; 32 for float32) mask pixels in another order;
* cellpose 3 removes small masks by their *position* among the present labels
  (wrong masks when the flow check left gaps); holes are filled with
  ``fill_voids`` (not ``scipy``: they differ at box edges in 3-D), in label
  order, a filled hole taking over the masks inside it.

Measured (``benchmarks/flows_reach.py``, the test model, objects 14-22 px):
trajectories read flows at most 0.59 (cellpose 3) / 1.0 (cellpose 4) object
diameters from their start, 99.9 % within 0.5 / 0.82; a follow halo of one
diameter is what to plan for, and any trajectory that leaves its window is followed
again in a larger one, so the halo changes the cost, never the result.
"""
