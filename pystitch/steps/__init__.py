"""The steps of a run, one module per CLI.

=================  =============================================================
``plan_blocks``    check the input, cut it into blocks, scan it once: plan.json
``segment_block``  segment blocks, store their local labels, write manifests
``face_pairs``     which objects of neighbouring blocks are one object
``resolve``        join all pairs into final ids: the lut
``apply_lut``      write final ids into the output, per-block statistics
``finalize``       regions table, QC, summary; publish the output
=================  =============================================================

Each has a pure array core (e.g. :func:`.face_pairs.pair_labels`,
:func:`.resolve.final_lut`) and a thin shell that reads and writes files
through :mod:`pystitch.storage`.  Steps never import each other and know
nothing of how they are scheduled.
"""
